from glocal.cli.main import app

app(prog_name="glocal")
