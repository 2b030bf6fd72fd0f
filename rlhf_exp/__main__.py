from rlhf_exp.tools.cli import main

main()
