"""Small shared helpers: seeding, devices, run folders, atomic writes, logging and progress."""
