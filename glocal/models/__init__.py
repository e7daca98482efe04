"""Network code: one module per seed model, shared ``layers/``, model ``geometry/`` (pyramids, receptive
fields, regions) and torch-free extractor ``configs``. Methods are made from these by the registry in
:mod:`glocal.methods` (``glocal.methods.create_extractor(name, **options)``)."""
