from fromzero.cli import app

app()
