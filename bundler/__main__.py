"""``python -m bundler`` runs the ami-bundler CLI."""

from bundler.cli import run

if __name__ == "__main__":
    run()
