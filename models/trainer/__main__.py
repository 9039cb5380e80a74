from models.trainer.cli import main

main()
