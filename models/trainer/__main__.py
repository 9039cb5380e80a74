from models.trainer.command import main

main()
