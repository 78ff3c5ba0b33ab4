"""`python -m softswitch`: the same as `p4nsm-softswitch`."""

from softswitch.main import main

main()
