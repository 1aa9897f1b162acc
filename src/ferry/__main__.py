from ferry.cli.main import app

app()
