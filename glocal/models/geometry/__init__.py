"""Model geometry: image pyramids (:mod:`.pyramid`), receptive fields of feature-map cells
(:mod:`.receptive_field`) and database regions (:mod:`.regions`). Import the modules themselves; this
package imports nothing, so that using one of them does not pull in the others (or torch)."""
