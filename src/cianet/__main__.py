from cianet.cli import console_main

console_main()
