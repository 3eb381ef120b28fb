from hubnet.cli import main

main()
