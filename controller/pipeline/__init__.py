"""Pipeline revisions: publish a P4 program to the fabric, roll it out, taint what the switches refuse."""
