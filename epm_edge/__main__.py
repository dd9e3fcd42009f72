from epm_edge.cli import main

main()
