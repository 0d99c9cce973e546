"""Tests of the config tree and command line (recall2imagine.config)."""

import copy
import math
import pickle
import re

import pytest
import yaml

from recall2imagine import config as C
from recall2imagine.config import Config, ConfigError, load_configs, parse


def test_defaults_schema_loads():
    cfg = parse([])
    assert cfg == C.default_config()
    assert cfg.rssm.deter == 4096
    assert cfg['rssm']['deter'] == 4096
    assert cfg['rssm.deter'] == 4096
    assert cfg.jax.train_devices == (0,)
    assert cfg.flat()['rssm.deter'] == 4096
    assert set(cfg.flat()) == set(C.default_config().flat())


def test_every_key_reachable_by_attribute():
    cfg = C.default_config()
    for key, value in cfg.flat().items():
        node = cfg
        for part in key.split('.'):
            node = getattr(node, part)
        assert node == value, key


def test_immutable():
    cfg = C.default_config()
    with pytest.raises(AttributeError):
        cfg.seed = 3
    with pytest.raises(AttributeError):
        cfg.rssm.deter = 3
    with pytest.raises(TypeError):
        cfg['seed'] = 3  # Mapping has no __setitem__
    assert copy.deepcopy(cfg) is cfg


def test_blocks_apply_in_order():
    cpu = load_configs()['cpu']
    a = parse(['--configs', 'popgym', 'cpu'])
    assert a.rssm.deter == cpu['rssm.deter'] != 512 and a.batch_size == cpu['batch_size']
    assert a.jax.platform == 'cpu'
    assert a.encoder.mlp_keys == 'vector'  # from popgym, untouched by cpu
    b = parse(['--configs', 'cpu', 'popgym'])
    assert b.rssm.deter == 512 and b.rssm.units == 1024
    assert b.batch_size == cpu['batch_size']  # popgym does not set it
    # repeated --configs and comma-separated names append
    assert parse(['--configs', 'popgym', '--configs', 'cpu']) == a
    assert parse(['--configs=popgym,cpu']) == a


def test_popgym_block_values():
    cfg = parse(['--configs', 'popgym'])
    assert (cfg.rssm.deter, cfg.rssm.units, cfg.rssm.hidden, cfg.ssm.n_layers) == (512, 1024, 512, 5)
    assert cfg.encoder.mlp_layers == 1 and cfg.decoder.mlp_units == 512
    for head in ('reward_head', 'cont_head', 'actor', 'critic'):
        assert cfg[head].layers == 2 and cfg[head].units == 512
    assert cfg.actor.inputs == ('stoch', 'hidden') and cfg.critic.inputs == ('stoch', 'hidden')
    assert cfg.reward_head.inputs == ('deter', 'stoch')
    assert cfg.run.steps == 200_000_000 and cfg.run.train_ratio == 64.0
    assert cfg.encoder.cnn_keys == '$^' and re.match(cfg.encoder.cnn_keys, 'image') is None


def test_bsuite_block_sets_rssm_units_by_pattern():
    cfg = parse(['--configs', 'bsuite'])
    assert cfg.rssm.units == 512 and cfg.actor.units == 512
    assert cfg.encoder.mlp_units == 1024  # `.*\.units` does not reach mlp_units
    assert cfg.ssm.discretization == 'zoh' and cfg.rssm.initial == 'zeros'
    assert cfg.ssm.reset_mode == 'none' and cfg.replay_size == 5_000_000


def test_bsuite_cpu_is_cpu_with_the_spec_dt_range():
    """`bsuite_cpu` reuses the `cpu` block (YAML merge) and only narrows the SSM step range."""
    ours = parse(['--configs', 'bsuite', 'bsuite_cpu']).flat()
    cpu = parse(['--configs', 'bsuite', 'cpu']).flat()
    assert {k for k in ours if ours[k] != cpu[k]} == {'ssm.dt_min', 'ssm.dt_max'}
    assert (ours['ssm.dt_min'], ours['ssm.dt_max']) == (0.001, 0.1) and ours['rssm.deter'] == 128


def test_popgym_cpu_is_cpu_with_the_settings_that_learned_repeat_previous():
    """`popgym_cpu` is `cpu` plus the four settings that learned RepeatPrevious (BENCHMARKS.md)."""
    ours = parse(['--configs', 'popgym', 'popgym_cpu']).flat()
    cpu = parse(['--configs', 'popgym', 'cpu']).flat()
    extra = {'rssm.hidden': 64, 'free_bits': 2.0, 'reward_head.bin_max': 1.0, 'actent': 3e-3}
    assert {k: ours[k] for k in ours if ours[k] != cpu[k]} == extra
    flags = parse(
        [
            '--configs',
            'popgym',
            'cpu',
            '--rssm.hidden',
            '64',
            '--free_bits',
            '2.0',
            '--reward_head.bin_max',
            '1.0',
            '--actent',
            '0.003',
        ]
    ).flat()
    assert flags == ours  # the recorded commands with explicit flags run the same model


def test_dotted_overrides_apply_in_order():
    cfg = parse(['--rssm.deter', '64', '--seed=3', '--rssm.deter=128', '--task', 'bsuite:memory_len/5'])
    assert cfg.rssm.deter == 128 and cfg.seed == 3 and cfg.task == 'bsuite:memory_len/5'
    # overrides come after all blocks, wherever --configs stands
    cfg = parse(['--rssm.deter', '64', '--configs', 'popgym'])
    assert cfg.rssm.deter == 64


def test_regex_in_block_uses_match(tmp_path, monkeypatch):
    text = C.CONFIGS_PATH.read_text() + (
        '\ntestblock:\n'
        "  rssm.units: 7\n"
        "  '.*\\.units': 9\n"  # re.match: also hits rssm.units (later entry wins)
        "  '.*mlp_l': 2\n"  # prefix match: hits encoder/decoder.mlp_layers
        "  actor.units: 11\n"
    )
    monkeypatch.setattr(C, '_configs_text', lambda: text)
    cfg = parse(['--configs', 'testblock'])
    assert cfg.rssm.units == 9 and cfg.critic.units == 9 and cfg.actor.units == 11
    assert cfg.encoder.mlp_layers == 2 and cfg.decoder.mlp_layers == 2
    assert cfg.encoder.mlp_units == 1024


def test_regex_on_cli_uses_fullmatch():
    cfg = parse([r'--.*\.units', '12'])
    assert cfg.rssm.units == cfg.actor.units == cfg.critic.units == 12
    assert cfg.encoder.mlp_units == 1024
    cfg = parse(['--(actor|critic)\\.inputs', 'stoch,hidden'])
    assert cfg.actor.inputs == cfg.critic.inputs == ('stoch', 'hidden')
    # a prefix that would re.match still has to match the whole key on the CLI
    with pytest.raises(ConfigError, match='no key'):
        parse(['--.*mlp_l', '2'])


def test_list_parsing_both_forms():
    assert parse(['--jax.train_devices', '0', '1']).jax.train_devices == (0, 1)
    assert parse(['--jax.train_devices', '0,1']).jax.train_devices == (0, 1)
    assert parse(['--jax.train_devices=2,3']).jax.train_devices == (2, 3)
    assert parse(['--jax.train_devices', '[4, 5]']).jax.train_devices == (4, 5)
    assert parse(['--actor.inputs', 'stoch', 'hidden']).actor.inputs == ('stoch', 'hidden')
    assert parse(['--actor.inputs', 'deter']).actor.inputs == ('deter',)
    assert parse(['--jax.train_devices=']).jax.train_devices == ()
    with pytest.raises(ConfigError, match=r"--jax.train_devices expects a list of int"):
        parse(['--jax.train_devices', 'a,b'])


def test_int_and_float_coercion():
    cfg = parse(['--run.steps', '1e5', '--replay_size', '1e7', '--run.train_ratio', '512'])
    assert cfg.run.steps == 100_000 and isinstance(cfg.run.steps, int)
    assert cfg.replay_size == 10_000_000
    assert cfg.run.train_ratio == 512.0 and isinstance(cfg.run.train_ratio, float)
    assert parse(['--actent', '1e-3']).actent == 1e-3
    with pytest.raises(ConfigError, match=r"--seed expects int, got '1.5'"):
        parse(['--seed', '1.5'])


def test_bool_parsing():
    assert parse(['--ssm.conj_sym', 'True']).ssm.conj_sym is True
    assert parse(['--ssm.conj_sym', 'true']).ssm.conj_sym is True
    assert parse(['--jax.jit', 'False']).jax.jit is False
    assert parse(['--jax.jit=false']).jax.jit is False
    for bad in ('yes', '1', '0', 'no'):
        with pytest.raises(ConfigError) as e:
            parse(['--ssm.conj_sym', bad])
        assert str(e.value) == f"--ssm.conj_sym expects True or False, got '{bad}'"


def test_error_unknown_key_suggests():
    with pytest.raises(ConfigError) as e:
        parse(['--rssm.deterr', '5'])
    assert str(e.value) == "unknown config key 'rssm.deterr'; did you mean 'rssm.deter'?"
    with pytest.raises(ConfigError, match=r"did you mean 'rssm.deter'\?"):
        parse(['--deter', '5'])
    with pytest.raises(ConfigError, match='run with --help'):
        parse(['--zzzzzzzz', '5'])


def test_error_unknown_config_name_suggests():
    with pytest.raises(ConfigError) as e:
        parse(['--configs', 'popgim'])
    msg = str(e.value)
    assert msg.startswith("unknown config name 'popgim'; available: ")
    for name in ('popgym', 'bsuite', 'mmaze', 'cpu', 'debug'):
        assert name in msg
    assert msg.endswith("did you mean 'popgym'?")


def test_error_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as e:
        parse(['--rssm.deter', 'abc'])
    assert str(e.value) == "--rssm.deter expects int, got 'abc'"
    with pytest.raises(ConfigError, match=r"--model_opt.lr expects float, got 'fast'"):
        parse(['--model_opt.lr', 'fast'])
    with pytest.raises(ConfigError, match=r'--rssm.deter takes one value, got 2'):
        parse(['--rssm.deter', '1', '2'])


def test_error_missing_value_and_non_flag():
    with pytest.raises(ConfigError, match=r'--rssm.deter needs a value'):
        parse(['--rssm.deter'])
    with pytest.raises(ConfigError, match=r'--seed needs a value'):
        parse(['--seed', '--rssm.deter', '3'])
    with pytest.raises(ConfigError, match=r'--configs needs at least one name'):
        parse(['--configs'])
    with pytest.raises(ConfigError, match=r"unexpected argument 'popgym'"):
        parse(['popgym'])
    with pytest.raises(ConfigError, match=r"unexpected argument '-x'"):
        parse(['-x', '1'])


def test_error_messages_are_one_line():
    bad = [
        ['--rssm.deterr', '1'],
        ['--configs', 'nope'],
        ['--seed', 'x'],
        ['--seed'],
        ['x'],
        ['--jax.jit', 'yes'],
        ['--(', '1'],
        ['--zz.*', '1'],
    ]
    for argv in bad:
        with pytest.raises(ConfigError) as e:
            parse(argv)
        assert '\n' not in str(e.value) and str(e.value), argv


def test_negative_number_is_a_value():
    """`-3` is read as the value of --seed (then refused by its range), not as a flag."""
    with pytest.raises(ConfigError, match=re.escape('--seed -3 is out of range')):
        parse(['--seed', '-3'])


def test_help_exits_zero(capsys):
    for flag in ('--help', '-h'):
        with pytest.raises(SystemExit) as e:
            parse([flag])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith('usage:')
        for key in C.default_config().flat():
            assert f'--{key} ' in out
        assert '--rssm.deter' in out and '4096' in out
    with pytest.raises(SystemExit):
        parse(['--configs', 'debug', '--help'])
    out = capsys.readouterr().out
    assert re.search(r'--rssm\.deter\s+32\n', out)


def test_update_semantics():
    cfg = C.default_config()
    new = cfg.update({'rssm.deter': '1e3', 'rssm': {'units': 8}, r'.*_opt\.clip': 5})
    assert new.rssm.deter == 1000 and new.rssm.units == 8
    assert new.model_opt.clip == new.actor_opt.clip == new.critic_opt.clip == 5.0
    assert cfg.rssm.deter == 4096  # original unchanged
    assert cfg.update(seed=4).seed == 4
    assert cfg.update({'jax.train_devices': [0, 1]}).jax.train_devices == (0, 1)
    with pytest.raises(ConfigError, match="did you mean 'rssm.deter'"):
        cfg.update({'rssm.detr': 1})
    with pytest.raises(ConfigError, match='expects True or False'):
        cfg.update({'jax.jit': 1})
    sub = cfg.rssm.update(deter=7)
    assert sub.deter == 7 and sub.units == 1024


def test_dict_leaf():
    cfg = Config({'env': {'kwargs': {}}, 'a': 1})
    assert cfg.env.kwargs == {}
    new = cfg.update({'env.kwargs': '{obs_key: observation, n: 2}'})
    assert dict(new.env.kwargs) == {'obs_key': 'observation', 'n': 2}
    assert new.update({'env': {'kwargs': {'x': 1}}}).env.kwargs['x'] == 1
    with pytest.raises(ConfigError, match='expects a YAML dict'):
        cfg.update({'env.kwargs': '[1, 2]'})
    assert pickle.loads(pickle.dumps(new)) == new


def test_save_round_trip(tmp_path):
    cfg = parse(['--configs', 'popgym', 'cpu', '--jax.train_devices', '0', '1', '--logdir', 'x/y'])
    path = tmp_path / 'sub' / 'config.yaml'
    cfg.save(path)
    data = yaml.safe_load(path.read_text())
    assert data['rssm']['deter'] == cfg.rssm.deter and data['jax']['train_devices'] == [0, 1]
    assert data['actor']['inputs'] == ['stoch', 'hidden']
    assert data == cfg.to_dict()
    assert Config.load(path) == cfg
    assert Config(data) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert hash(Config(data)) == hash(cfg)


def test_load_drops_keys_earlier_versions_wrote(tmp_path):
    cfg = parse(['--configs', 'popgym', 'debug'])
    data = cfg.to_dict()
    data['run']['expl_until'] = 0  # written by versions before this key was removed
    (tmp_path / 'config.yaml').write_text(yaml.safe_dump(data))
    assert Config.load(tmp_path / 'config.yaml') == cfg
    data['run']['explore_until'] = 0  # a key no version had is still refused
    (tmp_path / 'config.yaml').write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match='explore_until'):
        Config.load(tmp_path / 'config.yaml')


@pytest.mark.parametrize('name', C.config_names())
def test_every_named_block_applies(name):
    cfg = parse(['--configs', name])
    base = C.default_config()
    assert set(cfg.flat()) == set(base.flat())
    for key, value in cfg.flat().items():
        assert type(value) is type(base.flat()[key]), key
    # the cpu block is meant to follow a task block
    parse(['--configs', 'popgym', name])
    parse(['--configs', 'bsuite', name])


def test_expected_block_names():
    assert {'popgym', 'bsuite', 'mmaze', 'cpu', 'debug'} <= set(C.config_names())


def test_debug_block_is_tiny():
    cfg = parse(['--configs', 'debug'])
    assert (cfg.batch_size, cfg.batch_length) == (4, 16)
    assert (cfg.rssm.deter, cfg.rssm.units, cfg.rssm.hidden) == (32, 16, 8)
    assert cfg.jax.platform == 'cpu' and cfg.jax.precision == 'float32'
    assert cfg.run.log_every == 0 and cfg.imag_horizon == 5


def test_default_logdir():
    assert re.search(r'logdir/\d{8}-\d{6}$', C.default_logdir())
    assert re.search(r'logdir/\d{8}-\d{6}$', C.default_logdir(C.default_config()))
    assert C.default_logdir(parse(['--logdir', 'runs/a'])) == 'runs/a'


def _numeric_keys():
    flat = C.default_config().flat()
    out = []
    for key, value in flat.items():
        v = value[0] if isinstance(value, tuple) and value else value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((key, isinstance(v, int)))
    return out


def _bad_values(key, is_int):
    lo, hi, lo_closed, hi_closed = C._interval(C._range_rule(key))
    bad = []
    if math.isfinite(lo):
        bad.append(lo - 1 if lo_closed else lo)
    if math.isfinite(hi):
        bad.append(hi + 1 if hi_closed else hi)
    if not is_int:
        bad += [float('nan'), float('inf')]
    return [str(int(b)) if is_int and math.isfinite(b) else repr(b) for b in bad]


@pytest.mark.parametrize('key, is_int', _numeric_keys())
def test_every_numeric_key_refuses_out_of_range_values(key, is_int, capsys):
    """Table-driven over every numeric key: a bad value is one line naming the key, exit code 2."""
    from recall2imagine import train

    values = _bad_values(key, is_int)
    assert values, key
    for value in values:
        code = train.main(['--configs', 'popgym', 'debug', f'--{key}', value])
        err = capsys.readouterr().err
        assert code == 2, (key, value, err)
        assert err.startswith(f'error: --{key} ') and err.count('\n') == 1 and 'Traceback' not in err, err


@pytest.mark.parametrize('key, allowed', C.CHOICES)
def test_every_string_option_refuses_values_outside_its_choices(key, allowed, capsys):
    """Table-driven over config.CHOICES: each listed value parses, any other is one line naming the key
    and the allowed values, exit code 2; and the listed keys are exactly the ones configs.yaml documents
    with `a | b` choices."""
    from recall2imagine import train

    assert str(C.default_config()[key]) in allowed
    for value in allowed:
        assert str(parse(['--configs', 'popgym', 'debug', f'--{key}', value])[key]) == value
    code = train.main(['--configs', 'popgym', 'debug', f'--{key}', 'nonsense'])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: --{key} 'nonsense' is not one of: {', '.join(allowed)}\n", err


def test_choices_cover_the_documented_string_options():
    """The keys of config.CHOICES are the ones whose configs.yaml comment lists choices (`a | b`)."""
    documented, path = set(), []
    for line in C._configs_text().split('\ndefaults:\n', 1)[1].splitlines():
        if line and not line.startswith(' '):
            break  # the next block
        m = re.match(r'^( +)([A-Za-z_]+):(.*)$', line)
        if not m:
            continue
        depth = len(m.group(1)) // 2 - 1
        path = path[:depth] + [m.group(2)]
        if re.search(r'#.* \| ', m.group(3)):
            documented.add('.'.join(path))
    assert documented == {k for k, _ in C.CHOICES}


@pytest.mark.parametrize(
    'argv, needle',
    [
        (['--ssm.dt_min', '0.5', '--ssm.dt_max', '0.1'], '--ssm.dt_min 0.5 is above --ssm.dt_max 0.1'),
        (['--actor.minstd', '2'], '--actor.minstd 2.0 is above --actor.maxstd 1.0'),
        (['--retnorm.perclo', '95'], '--retnorm.perclo 95.0 must be below --retnorm.perchi 95.0'),
        (['--rssm.hidden', '10', '--ssm.n_blocks', '4'], 'must be a multiple of --ssm.n_blocks 4'),
        (['--replay_size', '20'], 'raise --replay_size to at least 32'),  # debug: 2 envs x 16 steps
    ],
)
def test_rules_between_keys(argv, needle):
    with pytest.raises(C.ConfigError, match=re.escape(needle)):
        parse(['--configs', 'popgym', 'debug', *argv])


def test_valid_configs_pass_the_ranges():
    for blocks in (
        ['popgym', 'popgym_cpu'],
        ['bsuite', 'bsuite_cpu'],
        ['mmaze', 'mmaze_small'],
        ['popgym'],
        ['popgym', 'popgym_main'],
        ['bsuite'],
        ['mmaze'],
        ['popgym', 'debug'],
        [],
    ):
        parse(['--configs', *blocks] if blocks else [])


def test_unwritable_logdir_is_one_line(tmp_path, capsys):
    from recall2imagine import train

    blocker = tmp_path / 'file'
    blocker.write_text('')
    code = train.main(['--configs', 'popgym', 'debug', '--logdir', str(blocker / 'run')])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith(f'error: --logdir {blocker / "run"} cannot be created')
        and err.count('\n') == 1
    )


def test_user_yaml_of_named_blocks_and_of_flat_keys(tmp_path):
    blocks = tmp_path / 'blocks.yaml'
    blocks.write_text("fast:\n  rssm.deter: 64\n  run:\n    train_ratio: 16\nwide:\n  '.*\\.units': 256\n")
    cfg = parse(['--configs', 'popgym', 'cpu', str(blocks), 'fast'])
    assert cfg.rssm.deter == 64 and cfg.run.train_ratio == 16 and cfg.rssm.units == 128  # `wide` not applied
    assert parse(['--configs', 'popgym', 'cpu', str(blocks), 'fast', 'wide']).actor.units == 256
    flat = tmp_path / 'flat.yml'
    flat.write_text('rssm: {deter: 96}\nrun.steps: 1234\n')
    cfg = parse(['--configs', 'popgym', str(flat)])
    assert cfg.rssm.deter == 96 and cfg.run.steps == 1234 and cfg.task.startswith('gym_popgym:')


def test_user_yaml_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match='cannot read it as YAML'):
        parse(['--configs', str(tmp_path / 'missing.yaml')])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('rssm.detr: 3\n')  # not a config key: read as a block named rssm.detr, which is no mapping
    with pytest.raises(ConfigError, match='must be a mapping'):
        parse(['--configs', str(bad)])
