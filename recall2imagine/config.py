"""Configuration tree and command line of recall2imagine.

The schema is the `defaults` block of the package's ``configs.yaml``. Named blocks
(``--configs popgym cpu``) are applied in order on top of it, then every other
``--key value`` / ``--key=value`` in command-line order.

Override semantics (blocks, command line and :meth:`Config.update`):

* A key is a dotted path (``rssm.deter``). A key containing any character other
    than letters, digits, ``_``, ``.`` and ``-`` is a regular expression over the
    dotted keys and sets every key it matches: ``re.match`` (anchored at the start
    only) inside ``configs.yaml`` blocks, ``re.fullmatch`` on the command line and
    in :meth:`Config.update`. A pattern that matches nothing is an error.
* Entries apply in order, so a later pattern overwrites an earlier explicit key.
* Values are coerced to the type of the current value: ints accept integral
    floats (``1e7``), floats accept ints, bools accept only ``True``/``False``
    (``true``/``false``), lists take several command-line values or one
    comma-separated string (or a YAML list ``[a, b]``), and a dict-valued leaf
    (an empty ``{}`` default) takes a YAML dict string.

Lists are stored as tuples and dict leaves as read-only mappings, so a
:class:`Config` is immutable; :meth:`Config.to_dict` gives plain lists and dicts.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import math
import os
import pathlib
import re
import sys
import types
from collections.abc import Mapping

import yaml

__all__ = [
    'CONFIGS_PATH',
    'Config',
    'ConfigError',
    'config_names',
    'default_config',
    'default_logdir',
    'help_text',
    'is_pattern',
    'load_configs',
    'parse',
]

CONFIGS_PATH = pathlib.Path(__file__).with_name('configs.yaml')

# Characters that make a key a regular expression (same rule as DreamerV3's embodied).
_PATTERN_CHARS = re.compile(r'[^A-Za-z0-9_.\-]')
_TRUE = ('True', 'true')
_FALSE = ('False', 'false')


# Keys that config.yaml files of earlier versions hold and this version dropped (read nowhere).
REMOVED_KEYS = ('run.expl_until',)


class ConfigError(ValueError):
    """A bad configuration or command line. The message is one line that names the fix."""


def is_pattern(key: str) -> bool:
    """Whether a config key is a regular expression rather than a dotted path."""
    return bool(_PATTERN_CHARS.search(key))


# ----------------------------------------------------------------------------
# Values


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _hashable(value):
    if isinstance(value, tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple((k, _hashable(v)) for k, v in value.items())
    return value


def _fmt(value) -> str:
    """Short human form of a value, for help and error messages."""
    if isinstance(value, tuple):
        return '[' + ', '.join(_fmt(v) for v in value) + ']'
    if isinstance(value, Mapping):
        return '{' + ', '.join(f'{k}: {_fmt(v)}' for k, v in value.items()) + '}'
    if isinstance(value, str):
        return value if value and not re.search(r'\s|^$', value) else repr(value)
    return str(value)


def _typename(value) -> str:
    if isinstance(value, bool):
        return 'True or False'
    if isinstance(value, tuple):
        return 'a list of ' + (_typename(value[0]) if value else 'values')
    if isinstance(value, Mapping):
        return "a YAML dict like '{a: 1}'"
    return type(value).__name__


class _Tokens(tuple):
    """Command-line values of one flag (one or more strings)."""


def _coerce_scalar(value, old, name):
    """Converts `value` to the type of `old`; raises ConfigError naming `name`."""
    if old is None:
        return yaml.safe_load(value) if isinstance(value, str) else value
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip() in _TRUE + _FALSE:
            return value.strip() in _TRUE
        raise ConfigError(f'{name} expects True or False, got {value!r}')
    if isinstance(old, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number) and number.is_integer():
                return int(number)
        raise ConfigError(f'{name} expects int, got {value!r}')
    if isinstance(old, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f'{name} expects float, got {value!r}')
    if isinstance(old, str):
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return 'True' if value else 'False'
        if isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f'{name} expects str, got {value!r}')
    # Any other scalar type: convert with its constructor.
    try:
        return type(old)(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} expects {type(old).__name__}, got {value!r}') from None


def _split_list(text: str):
    text = text.strip()
    if text.startswith('[') and text.endswith(']'):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    if not text:
        return []
    return [part.strip() for part in text.split(',')]


def _coerce(value, old, name):
    """Converts a block/update value or command-line tokens to the type of `old`."""
    if isinstance(old, tuple):
        if isinstance(value, _Tokens):
            items = list(value) if len(value) > 1 else _split_list(value[0])
        elif isinstance(value, str):
            items = _split_list(value)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, Mapping) or value is None:
            raise ConfigError(f'{name} expects {_typename(old)}, got {value!r}')
        else:
            items = [value]
        if old:
            proto = old[0]
            try:
                return tuple(_coerce_scalar(item, proto, name) for item in items)
            except ConfigError:
                raise ConfigError(f'{name} expects {_typename(old)}, got {_fmt(_freeze(items))}') from None
        return tuple(_freeze(yaml.safe_load(item) if isinstance(item, str) else item) for item in items)
    if isinstance(value, _Tokens):
        if len(value) != 1:
            shown = ' '.join(repr(v) for v in value)
            raise ConfigError(f'{name} takes one value, got {len(value)}: {shown}')
        value = value[0]
    if isinstance(old, Mapping):
        parsed = value
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                parsed = None
        if not isinstance(parsed, Mapping):
            raise ConfigError(f'{name} expects {_typename(old)}, got {value!r}')
        return _freeze(parsed)
    if isinstance(value, (list, tuple, Mapping)) and old is not None:
        raise ConfigError(f'{name} expects {_typename(old)}, got {_fmt(_freeze(value))}')
    return _freeze(_coerce_scalar(value, old, name))


# ----------------------------------------------------------------------------
# Keys


def _did_you_mean(key: str, keys) -> str:
    keys = list(keys)
    tail = [k for k in keys if k.endswith('.' + key)]
    if len(tail) == 1:
        return f'; did you mean {tail[0]!r}?'
    if tail:
        return '; did you mean one of ' + ', '.join(repr(k) for k in tail[:4]) + '?'
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return f'; did you mean {close[0]!r}?'
    return '; run with --help to list keys'


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if is_pattern(prefix) or is_pattern(key):
        return prefix + r'\.' + key
    return prefix + '.' + key


def _flatten_input(mapping, schema, prefix=''):
    """Flattens an override mapping into ordered (key, value) entries.

    Nested mappings are groups unless the dotted path names a leaf of `schema`
    (a dict-valued leaf), so both `{'rssm': {'deter': 1}}` and `{'rssm.deter': 1}` work.
    """
    entries = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f'config keys must be strings, got {key!r}')
        full = _join(prefix, key)
        if isinstance(value, Mapping) and value and full not in schema:
            entries.extend(_flatten_input(value, schema, full))
        else:
            entries.append((full, value))
    return entries


def _apply(flat: dict, entries, fullmatch: bool, label) -> dict:
    """Applies override entries in order to a flat dict and returns the new dict.

    `label(key)` gives the display name of a key in error messages and
    `fullmatch` selects re.fullmatch (command line, update) or re.match (blocks).
    """
    result = dict(flat)
    for key, value in entries:
        if is_pattern(key):
            try:
                regex = re.compile(key)
            except re.error as e:
                raise ConfigError(f'{label(key)} is not a valid regular expression ({e})') from None
            matcher = regex.fullmatch if fullmatch else regex.match
            targets = [k for k in result if matcher(k)]
            if not targets:
                how = 'fully matches' if fullmatch else 'matches'
                raise ConfigError(f"config pattern '{key}' {how} no key; run with --help to list keys")
            for target in targets:
                result[target] = _coerce(value, result[target], f'{label(key)} (key {target})')
        else:
            if key not in result:
                raise ConfigError(f'unknown config key {key!r}{_did_you_mean(key, result)}')
            result[key] = _coerce(value, result[key], label(key))
    return result


# ----------------------------------------------------------------------------
# Config


def _rebuild(flat):
    return Config._from_flat({k: _freeze(v) for k, v in flat.items()})


class Config(Mapping):
    """Immutable nested mapping with attribute and item access.

    >>> cfg = Config({'rssm': {'deter': 8, 'units': 4}, 'seed': 0})
    >>> cfg.rssm.deter, cfg['rssm']['deter'], cfg['rssm.deter']
    (8, 8, 8)
    >>> cfg.update({'rssm.deter': '1e3'}).rssm.deter
    1000

    Nested mappings given to the constructor are groups, except empty ones, which
    are dict-valued leaves.
    """

    __slots__ = ('_flat', '_tree')

    def __init__(self, data=(), /, **kwargs):
        if isinstance(data, Config) and not kwargs:
            flat = dict(data._flat)
        else:
            merged = dict(data)
            merged.update(kwargs)
            flat = {}
            self._flatten_plain(merged, '', flat)
        self._setup(flat)

    @classmethod
    def _from_flat(cls, flat: dict) -> Config:
        self = cls.__new__(cls)
        self._setup(dict(flat))
        return self

    @staticmethod
    def _flatten_plain(mapping, prefix, out):
        for key, value in mapping.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f'config keys must be non-empty strings, got {key!r}')
            full = f'{prefix}.{key}' if prefix else key
            if isinstance(value, Mapping) and value and not isinstance(value, types.MappingProxyType):
                Config._flatten_plain(value, full, out)
            else:
                out[full] = _freeze(value)

    def _setup(self, flat: dict):
        for key in flat:
            parts = key.split('.')
            for i in range(1, len(parts)):
                if '.'.join(parts[:i]) in flat:
                    raise ConfigError(f'config key {key!r} is nested under the value {".".join(parts[:i])!r}')
        groups, tree = {}, {}
        for key, value in flat.items():
            head, dot, rest = key.partition('.')
            if dot:
                if head not in groups:
                    groups[head] = {}
                    tree[head] = None
                groups[head][rest] = value
            else:
                tree[head] = value
        for head, sub in groups.items():
            tree[head] = Config._from_flat(sub)
        object.__setattr__(self, '_flat', flat)
        object.__setattr__(self, '_tree', tree)

    # Mapping interface ---------------------------------------------------------

    def __getitem__(self, key):
        if key in self._tree:
            return self._tree[key]
        if isinstance(key, str) and '.' in key:
            head, _, rest = key.partition('.')
            node = self._tree.get(head)
            if isinstance(node, Config):
                try:
                    return node[rest]
                except KeyError:
                    pass
        hint = _did_you_mean(key, self._flat) if isinstance(key, str) else ''
        raise KeyError(f'unknown config key {key!r}{hint}')

    def __iter__(self):
        return iter(self._tree)

    def __len__(self):
        return len(self._tree)

    def __getattr__(self, name):
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            return self._tree[name]
        except KeyError:
            raise AttributeError(f'unknown config key {name!r}{_did_you_mean(name, self._flat)}') from None

    def __setattr__(self, name, value):
        raise AttributeError('Config is immutable; use cfg.update({...}) to get a changed copy')

    def __delattr__(self, name):
        raise AttributeError('Config is immutable')

    def __eq__(self, other):
        if isinstance(other, Config):
            return self._flat == other._flat
        if isinstance(other, Mapping):
            return self.to_dict() == _thaw(dict(other))
        return NotImplemented

    def __hash__(self):
        return hash(tuple((k, _hashable(v)) for k, v in self._flat.items()))

    def __reduce__(self):
        return _rebuild, ({k: _thaw(v) for k, v in self._flat.items()},)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f'Config({self.to_dict()!r})'

    def __str__(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None).rstrip()

    # API -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Nested plain dicts and lists."""
        return {k: (v.to_dict() if isinstance(v, Config) else _thaw(v)) for k, v in self._tree.items()}

    def flat(self) -> dict:
        """Dict of dotted keys to (immutable) values, in schema order."""
        return dict(self._flat)

    def update(self, mapping=(), /, **kwargs) -> Config:
        """Returns a copy with overrides applied, with the command line's semantics.

        Keys are dotted paths or nested mappings; keys with regex characters are
        patterns that must fully match. Values are coerced to the existing types
        (strings are parsed as on the command line). Unknown keys raise ConfigError.
        """
        merged = dict(mapping)
        merged.update(kwargs)
        entries = _flatten_input(merged, self._flat)
        return Config._from_flat(_apply(self._flat, entries, True, lambda k: k))

    def save(self, path) -> None:
        """Writes the config as YAML (creating parent folders)."""
        path = pathlib.Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(str(self) + '\n')
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, base: Config | None = None) -> Config:
        """Reads a YAML file written by :meth:`save`, applied over `base` (default: defaults). Keys
        that earlier versions wrote and this one no longer has (REMOVED_KEYS) are dropped."""
        base = default_config() if base is None else base
        data = yaml.safe_load(pathlib.Path(path).expanduser().read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f'{path} does not hold a YAML mapping of config keys')
        for key in REMOVED_KEYS:
            *parents, leaf = key.split('.')
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, Mapping) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        return base.update(data)


# ----------------------------------------------------------------------------
# configs.yaml


@functools.lru_cache(maxsize=None)
def _configs_text() -> str:
    return CONFIGS_PATH.read_text()


def load_configs() -> dict:
    """The package's configs.yaml as a dict: `defaults` and the named blocks, in file order."""
    data = yaml.safe_load(_configs_text())
    if not isinstance(data, dict) or not isinstance(data.get('defaults'), dict):
        raise ConfigError(f'{CONFIGS_PATH} must hold a mapping with a `defaults` block')
    for name, block in data.items():
        if not isinstance(block, dict):
            raise ConfigError(f'{CONFIGS_PATH}: block {name!r} must be a mapping')
    return data


def config_names() -> list[str]:
    """Names usable with --configs, in file order."""
    return [name for name in load_configs() if name != 'defaults']


@functools.lru_cache(maxsize=None)
def default_config() -> Config:
    """The `defaults` block as a Config (the schema)."""
    return Config(load_configs()['defaults'])


def _user_yaml(path: str, configs: dict, schema: dict) -> list[str]:
    """Reads a user's YAML file given to --configs. A file whose top-level keys are config keys
    (`rssm: {deter: 256}`, `rssm.deter: 256` or patterns) is one block, named by its path; otherwise
    its top-level mappings are named blocks, usable after it in --configs. Returns the names to apply
    now (the path, or none)."""
    file = pathlib.Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(
            f'--configs {path}: cannot read it as YAML ({type(e).__name__}: {" ".join(str(e).split())[:200]})'
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f'--configs {path}: the file must hold a mapping (config keys or named blocks)')
    sections = {k.split('.')[0] for k in schema}
    if all(k in sections or k in schema or is_pattern(k) for k in data):
        configs[path] = data
        return [path]
    for name, block in data.items():
        if not isinstance(block, dict):
            raise ConfigError(f'--configs {path}: block {name!r} must be a mapping of config keys')
        configs[name] = block
    return []


def _apply_blocks(names, configs=None) -> Config:
    configs = dict(load_configs() if configs is None else configs)
    cfg = Config(configs['defaults'])
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name == 'defaults':
            continue
        if name not in configs and name.endswith(('.yaml', '.yml')):
            pending[:0] = _user_yaml(name, configs, cfg._flat)
            continue
        available = [n for n in configs if n != 'defaults']
        if name not in configs:
            close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            raise ConfigError(f'unknown config name {name!r}; available: {", ".join(available)}{hint}')
        entries = _flatten_input(configs[name], cfg._flat)
        label = lambda k: k  # noqa: E731
        try:
            flat = _apply(cfg._flat, entries, False, label)
        except ConfigError as e:
            where = name if name.endswith(('.yaml', '.yml')) else f'configs.yaml block {name!r}'
            raise ConfigError(f'{where}: {e}') from None
        cfg = Config._from_flat(flat)
    return cfg


# ----------------------------------------------------------------------------
# Command line


USAGE = 'usage: python -m recall2imagine.train [--configs NAME ...] [--key value ...]'


def help_text(cfg: Config | None = None, names=()) -> str:
    """Usage and every key with its value (defaults, or after the blocks `names`)."""
    cfg = default_config() if cfg is None else cfg
    flat = cfg.flat()
    width = max(len(k) for k in flat) + 2
    applied = f' (after --configs {" ".join(names)})' if names else ''
    lines = [
        USAGE,
        '',
        f'Named configs, applied in order over defaults: {", ".join(config_names())}.',
        'Keys are dotted paths (--rssm.deter 512 or --rssm.deter=512), applied in order.',
        "A key with regex characters sets every key it fully matches: --'.*\\.units' 512.",
        'Lists take several values or a comma-separated string; bools are True or False.',
        '',
        f'Keys and values{applied}:',
    ]
    for key, value in flat.items():
        lines.append(f'  --{key.ljust(width)}{_fmt(value)}')
    return '\n'.join(lines)


def _tokenize(argv):
    """Splits argv into (flag, values) pairs, keeping command-line order."""
    items = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith('--') or token == '--':
            raise ConfigError(f'unexpected argument {token!r}; give options as --key value or --key=value')
        body = token[2:]
        if '=' in body:
            key, value = body.split('=', 1)
            values = [value]
            i += 1
        else:
            key = body
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith('--'):
                values.append(argv[i])
                i += 1
        if not key:
            raise ConfigError(f'empty option name in {token!r}; give options as --key value')
        if not values:
            if key == 'configs':
                raise ConfigError(
                    f'--configs needs at least one name; available: {", ".join(config_names())}'
                )
            raise ConfigError(f'--{key} needs a value, e.g. --{key}=VALUE')
        items.append((key, values))
    return items


def parse(argv=None) -> Config:
    """Builds the config from command-line arguments (default: sys.argv[1:]).

    `--configs A B` (may repeat; names also comma-separated) applies blocks in
    order over defaults; then every other `--key value` applies in command-line
    order. `--help`/`-h` prints usage and all keys, then exits with status 0.
    Raises ConfigError with a one-line message on any mistake.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--help' in argv or '-h' in argv:
        names, cfg = (), None
        try:
            rest = [a for a in argv if a not in ('--help', '-h')]
            names = [
                n
                for key, values in _tokenize(rest)
                if key == 'configs'
                for v in values
                for n in v.split(',')
                if n
            ]
            cfg = _apply_blocks(names)
        except ConfigError:
            names, cfg = (), None
        print(help_text(cfg, names))
        raise SystemExit(0)
    items = _tokenize(argv)
    names = [
        n.strip()
        for key, values in items
        if key == 'configs'
        for v in values
        for n in v.split(',')
        if n.strip()
    ]
    cfg = _apply_blocks(names)
    entries = [(key, _Tokens(values)) for key, values in items if key != 'configs']
    flat = _apply(cfg._flat, entries, True, lambda k: '--' + k)
    cfg = Config._from_flat(flat)
    check_ranges(cfg)
    return cfg


# Allowed values of every numeric key: (regex over dotted keys, interval). `[a, b]` closed, `(a, b)`
# open, `inf` unbounded; the first rule that matches a key applies. Cross-key rules: `check_ranges`.
RANGES = (
    (r'seed', '[0, inf)'),
    (r'replay_size|batch_size', '[1, inf)'),
    (r'batch_length', '[2, inf)'),  # one step has no dynamics to learn
    (r'run\.steps', '[0, inf)'),  # 0: resume (or rebuild the replay) and stop
    (r'run\.save_every|run\.keep_checkpoints|run\.eval_every', '(0, inf)'),
    (r'run\.train_ratio', '(0, inf)'),  # 0 would mean no training at all
    (r'run\.(train_fill|log_every|eval_eps|report_every)', '[0, inf)'),
    (r'run\.report_context|jax\.sync_every|envs\.amount|envs\.size', '[1, inf)'),
    (r'jax\.(train|policy)_devices|jax\.process_id', '[0, inf)'),
    (r'jax\.num_processes', '[1, inf)'),
    (r'jax\.coordinator_timeout', '(0, inf)'),
    (r'envs\.length', '[0, inf)'),  # 0: no time limit
    (r'rssm\.(deter|units|hidden|stoch|classes)|ssm\.(n_layers|n_blocks)', '[1, inf)'),
    (r'.*unimix|ssm\.dropout', '[0, 1)'),
    (r'rssm\.action_clip', '[0, inf)'),  # 0: no clipping
    (r'ssm\.dt_(min|max)', '(0, inf)'),
    (r'(encoder|decoder)\.(mlp_layers|mlp_units|cnn_depth|minres|cnn_chunk)', '[1, inf)'),
    (r'(reward_head|cont_head|actor|critic)\.(layers|units)', '[1, inf)'),
    (r'(reward_head|critic)\.bins', '[2, inf)'),
    (r'(reward_head|critic)\.bin_max|actor\.(minstd|maxstd)', '(0, inf)'),
    (r'.*\.outscale|loss_scales\..*|free_bits|.*_opt\.wd|imag_starts|actor_vjp_mb|actent', '[0, inf)'),
    (r'.*_opt\.(lr|ssm_lr|eps|clip)', '(0, inf)'),
    (r'imag_horizon', '[1, inf)'),
    (r'horizon', '(1, inf)'),  # discount 1 - 1/horizon
    (r'return_lambda', '[0, 1]'),
    (r'slow_critic_fraction', '(0, 1]'),
    (r'retnorm\.decay', '[0, 1)'),
    (r'retnorm\.max', '(0, inf)'),
    (r'retnorm\.perc(lo|hi)', '[0, 100]'),
)


# The values each string-valued option with a fixed set of them accepts (configs.yaml comments).
CHOICES = (
    ('replay', ('memory', 'disk', 'lfs')),
    ('jax.platform', ('auto', 'cpu', 'gpu')),
    ('jax.precision', ('auto', 'float32', 'bfloat16', 'float16')),
    ('jax.malloc', ('auto', 'tcmalloc', 'system')),
    ('envs.parallel', ('none', 'process')),
    ('rssm.core', ('ssm', 'gru')),
    ('rssm.initial', ('learned', 'zeros')),
    ('ssm.C_init', ('trunc_standard_normal', 'lecun_normal', 'complex_normal')),
    ('ssm.discretization', ('bilinear', 'zoh')),
    ('ssm.reset_mode', ('init', 'none')),
    ('ssm.parallel', ('auto', 'True', 'False')),
)


def _interval(text: str):
    """'[1, inf)' -> (1.0, inf, lo_closed, hi_closed)."""
    lo, hi = (float(x) for x in text[1:-1].split(','))
    return lo, hi, text[0] == '[', text[-1] == ']'


def _range_rule(key: str):
    return next((text for pattern, text in RANGES if re.fullmatch(pattern, key)), None)


def check_ranges(cfg: Config) -> None:
    """Raises ConfigError naming the first key whose value is out of its range (RANGES), not one of its
    CHOICES, or breaks a rule between keys; a value of any numeric key that is NaN or infinite is out of
    range too."""
    flat = cfg.flat()
    for key, value in flat.items():
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            rule = _range_rule(key)
            if rule is None:
                raise AssertionError(f'numeric key {key} has no range in config.RANGES')
            lo, hi, lo_closed, hi_closed = _interval(rule)
            inside = (
                math.isfinite(v) and (v >= lo if lo_closed else v > lo) and (v <= hi if hi_closed else v < hi)
            )
            if not inside:
                kind = 'an integer' if isinstance(v, int) else 'a number'
                raise ConfigError(f'--{key} {_fmt(v)} is out of range: it must be {kind} in {rule}')

    for key, allowed in CHOICES:
        if str(flat[key]) not in allowed:
            raise ConfigError(f'--{key} {flat[key]!r} is not one of: {", ".join(allowed)}')

    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    need(
        flat['ssm.dt_min'] <= flat['ssm.dt_max'],
        f'--ssm.dt_min {_fmt(flat["ssm.dt_min"])} is above --ssm.dt_max {_fmt(flat["ssm.dt_max"])}',
    )
    need(
        flat['actor.minstd'] <= flat['actor.maxstd'],
        f'--actor.minstd {_fmt(flat["actor.minstd"])} is above --actor.maxstd {_fmt(flat["actor.maxstd"])}',
    )
    need(
        flat['retnorm.perclo'] < flat['retnorm.perchi'],
        f'--retnorm.perclo {_fmt(flat["retnorm.perclo"])} must be below --retnorm.perchi {_fmt(flat["retnorm.perchi"])}',
    )
    need(
        flat['rssm.hidden'] % flat['ssm.n_blocks'] == 0,
        f'--rssm.hidden {flat["rssm.hidden"]} (SSM state size) must be a multiple of --ssm.n_blocks {flat["ssm.n_blocks"]}',
    )
    procs = flat['jax.num_processes']
    need(
        flat['jax.process_id'] < procs,
        f'--jax.process_id {flat["jax.process_id"]} must be below --jax.num_processes {procs}',
    )
    need(
        (procs > 1) == bool(flat['jax.coordinator']),
        '--jax.coordinator HOST:PORT (process 0\'s address) is needed with --jax.num_processes > 1, and only then',
    )
    need(
        flat['batch_size'] % procs == 0,
        f'--batch_size {flat["batch_size"]} is the global batch: it must be divisible by --jax.num_processes {procs}',
    )
    per_env = flat['replay_size'] // flat['envs.amount']
    need(
        per_env >= flat['batch_length'],
        f'--replay_size {flat["replay_size"]} holds {per_env} steps per env ({flat["envs.amount"]} envs), fewer than '
        f'one --batch_length {flat["batch_length"]} window; raise --replay_size to at least '
        f'{flat["batch_length"] * flat["envs.amount"]}',
    )


def default_logdir(cfg: Config | None = None) -> str:
    """`cfg.logdir` expanded, or `~/logdir/<YYYYmmdd-HHMMSS>` when it is empty or `cfg` is None."""
    if cfg is not None and cfg.get('logdir'):
        return os.path.expanduser(cfg['logdir'])
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    return os.path.expanduser(os.path.join('~', 'logdir', stamp))
