"""``python -m recall2imagine.envs --list [suite]``: print the task strings."""

import argparse
import sys

from recall2imagine.envs import SUITES, list_tasks


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m recall2imagine.envs')
    parser.add_argument(
        '--list',
        nargs='?',
        const='all',
        metavar='SUITE',
        help=f'list task strings of a suite ({", ".join(SUITES)}) or of all suites',
    )
    args = parser.parse_args(argv)
    if args.list is None:
        parser.print_help()
        return 0
    try:
        tasks = list_tasks(None if args.list == 'all' else args.list)
    except (ValueError, NotImplementedError) as e:
        print(e, file=sys.stderr)
        return 2
    print('\n'.join(tasks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
