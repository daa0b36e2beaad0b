"""``python -m edgesam_cli`` runs the ``edgesam`` command."""

from edgesam_cli.main import main

if __name__ == "__main__":
    main()
