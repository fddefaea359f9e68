from traitloop.cli import main

main()
