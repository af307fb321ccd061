"""`hpc-mm import`: a launch script as it runs, written as a job file.

`trace` runs the script under bash in a throw-away copy of its folder with every launcher and every
command that changes something replaced by a recorder, and reads what each launch would run after all
of bash's expansion; `translate` writes that as a job file (or a pipeline of them), each value with
the script line it came from, and says what it could not carry. `differences` is the one table of
what hpc-mm runs differently from a script, and why.
"""
