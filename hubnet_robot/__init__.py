"""The robot services: speak (text to WAV), listen (WAV to text) and face (who is this?).

Each is an ordinary command-line program that reads stdin and writes stdout, runnable on its
own (`python -m hubnet_robot.speak`, or the `hubnet-speak` script) and served by `hubnode
serve --example-services`. Their heavy dependencies are the optional extras `hubnet[speech]`
and `hubnet[face]`, so a Pi that only calls installs none of them.
"""
