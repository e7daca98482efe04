from glocal.cli.main import run

run()
