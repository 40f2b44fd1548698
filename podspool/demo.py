"""`podspool demo`: the whole product on this machine with the bundled sample events."""


def main(directory):
    # NOTE: the demo needs the emulator, devices and outputs; until they are
    # wired into the service it only says so and succeeds.
    print("podspool demo: not built yet; run `podspool check -c conf/podspool.yaml` meanwhile")
    return 0
