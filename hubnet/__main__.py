from hubnet.main import main

main()
