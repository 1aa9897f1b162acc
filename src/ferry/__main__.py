from ferry.cli.entry import main

main()
