"""invaudit's command line (installed as ``invaudit.cli``). One module per command."""
