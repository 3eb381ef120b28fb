"""The robot services: speak (text to WAV), listen (WAV to text) and face (who is this?).

Each is an ordinary command-line program that reads stdin and writes stdout, runnable on its
own (`python -m hubnet_robot.speak`, or the `hubnet-speak` script) and served by `hubnode
serve --example-services`. Their heavy dependencies are the optional extras `speech` and
`face` (`pipx install '.[speech,face]'` from the checkout), so a Pi that only calls installs
none of them; a program missing one says the command that adds it (see _extras.py).
"""
