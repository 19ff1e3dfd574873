"""`python -m hopt_cli` is `hopt`."""
from hopt_cli.cli import main

main()
