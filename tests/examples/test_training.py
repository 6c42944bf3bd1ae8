r"""The shared helpers of the example scripts (``examples/training.py``):
options, results and their files, and the reductions across ranks."""
import json
import os
import socket
import statistics

import pytest
import torch
import torch.multiprocessing as mp

from tests.examples import load_example

training = load_example('training')


def parser():
    return training.common_parser('test', datasets=['a', 'b'],
                                  models=['m', 'n'], dataset='a', model='m',
                                  epochs=7)


def test_options_and_seeds():
    args = parser().parse_args([])
    assert (args.dataset, args.model, args.epochs, args.seeds) == \
        ('a', 'm', 7, [0])
    assert parser().parse_args(['--seed', '3']).seeds == [3]
    assert parser().parse_args(['--seeds', '0', '1', '4']).seeds == [0, 1, 4]
    args = parser().parse_args(['--batch-size', '8', '--lr', '0.1',
                                '--hidden', '5', '--out', 'o', '--root',
                                'r', '--model', 'n', '--ddp', '--threads',
                                '1'])
    assert (args.batch_size, args.lr, args.hidden, args.out, args.root,
            args.model, args.ddp, args.threads) == \
        (8, 0.1, 5, 'o', 'r', 'n', True, 1)
    with pytest.raises(SystemExit):
        parser().parse_args(['--model', 'x'])


@pytest.mark.parametrize('argv', [
    ['--epochs', '0'], ['--epochs', '-1'], ['--hidden', '0'],
    ['--batch-size', '0'], ['--threads', '0'], ['--lr', '0'],
    ['--lr', 'nan'], ['--device', 'bogus'],
])
def test_bad_options_are_usage_errors(argv, capsys):
    """Out-of-range values stop at the command line (exit code 2, a
    message naming the option), not in a traceback from the run."""
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f'argument {argv[0]}' in capsys.readouterr().err


def test_heads_must_divide_hidden(capsys):
    p = parser()
    p.add_argument('--heads', type=training.positive_int, default=2)
    p.add_argument('--dropout', type=training.probability, default=0.1)
    assert training.parse_checked(p, ['--hidden', '8']).heads == 2
    with pytest.raises(SystemExit):
        training.parse_checked(p, ['--hidden', '9'])
    assert '--heads 2 must divide --hidden 9' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training.parse_checked(p, ['--dropout', '1.5'])
    assert training.parse_checked(p, ['--device', 'cuda:1']).device == \
        'cuda:1'


def test_seed_and_device():
    training.seed_everything(5)
    a = torch.rand(3)
    training.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    assert training.resolve_device('cpu') == torch.device('cpu')
    assert training.resolve_device('cuda', local_rank=1) == \
        torch.device('cuda:1')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert training.resolve_device('auto').type == expected


def test_log_line(capsys):
    training.log_epoch(3, loss=0.41274, train=0.7312, seconds=1.524,
                       eval_seconds=0.5)
    assert capsys.readouterr().out == (
        'Epoch: 003, Loss: 0.4127, Train: 0.7312, Time: 1.52s, '
        'Eval seconds: 0.50s\n')


def test_mean_std():
    values = [0.7, 0.75, 0.81, 0.69]
    out = training.mean_std(values)
    assert out['mean'] == pytest.approx(statistics.mean(values))
    assert out['std'] == pytest.approx(statistics.stdev(values))
    assert training.mean_std([2.0]) == {'mean': 2.0, 'std': 0.0, 'count': 1}


def fill(results, curves):
    for seed, valid in curves.items():
        results.start_run(seed)
        for epoch, v in enumerate(valid, 1):
            results.add_epoch(epoch, log=False, loss=1.0 / epoch,
                              valid=v, test=v + 0.5, seconds=float(epoch))
        results.finish_run(num_parameters=10)


@pytest.mark.parametrize('higher', [True, False])
def test_results_pick_the_best_validation_epoch(higher):
    results = training.Results('r', {}, 'm', higher_is_better=higher)
    fill(results, {0: [0.2, 0.9, 0.5], 1: [0.4, 0.3, 0.6]})
    best = [1, 2] if higher else [0, 1]  # epochs - 1
    for run, index, curve in zip(results.runs, best,
                                 ([0.2, 0.9, 0.5], [0.4, 0.3, 0.6])):
        assert run['final'] == {'loss': 1.0 / (index + 1),
                                'valid': curve[index],
                                'test': curve[index] + 0.5,
                                'best_epoch': index + 1,
                                'num_parameters': 10}
        assert run['seconds_per_epoch'] == 2.0
    summary = results.summary()
    tests = [r['final']['test'] for r in results.runs]
    assert summary['test']['mean'] == pytest.approx(statistics.mean(tests))
    assert summary['test']['std'] == pytest.approx(statistics.stdev(tests))
    assert summary['seconds_per_epoch']['mean'] == 2.0


def test_results_files(tmp_path, capsys):
    results = training.Results('run', {'lr': 0.1}, 'rocauc', True)
    fill(results, {0: [0.5, 0.6], 3: [0.7, 0.65]})
    path = results.write(str(tmp_path / 'out'))
    with open(path) as f:
        saved = json.load(f)
    assert saved['config'] == {'lr': 0.1} and saved['metric'] == 'rocauc'
    assert [r['seed'] for r in saved['runs']] == [0, 3]
    assert saved['runs'][1]['epochs'][1] == {
        'epoch': 2, 'loss': 0.5, 'valid': 0.65, 'test': 1.15, 'seconds': 2.0}
    assert saved['summary']['valid']['mean'] == pytest.approx(0.65)
    assert saved['machine']['cpu_count'] == os.cpu_count()
    assert saved['runs'][0]['peak_memory_mb'] > 0
    png = tmp_path / 'out' / 'run.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'Valid rocauc: 0.6500 ± 0.0707 over 2 seed(s)' in \
        capsys.readouterr().out

    table = training.results_table([path]).splitlines()
    assert len(table) == 3 and table[0].startswith('| dataset |')
    assert '| 2 | 1.1500 ± 0.0707 rocauc | 0.6500 ± 0.0707 | 1.50 ± 0.00 |' \
        in table[2]

    # Two files in one picture; a run without a 'loss' is refused loudly.
    twin = training.Results('twin', {'model': 'm'}, 'rocauc', True)
    fill(twin, {1: [0.4, 0.8]})
    both = [path, twin.write(str(tmp_path / 'out'))]
    training.compare_curves(both, str(tmp_path / 'both.png'))
    assert (tmp_path / 'both.png').read_bytes()[:4] == b'\x89PNG'
    twin.runs[0]['epochs'][0].pop('loss')
    with pytest.raises(KeyError):
        training.compare_curves([twin.write(str(tmp_path / 'bad'))],
                                str(tmp_path / 'bad.png'))

    other = training.Distributed(1, 2, 1, torch.device('cpu'))
    results = training.Results('run', {}, 'rocauc', True, dist=other)
    fill(results, {0: [0.5]})
    assert results.write(str(tmp_path / 'rank1')) is None
    assert not (tmp_path / 'rank1').exists()  # only rank 0 writes


def test_the_results_command(tmp_path, capsys):
    """``python examples/training.py FILES [--plot PNG]``: files of one
    model and files of several arms (one row each), usage on --help, and
    a JSON of no training script named."""
    with pytest.raises(SystemExit) as exit:
        training.main(['--help'])
    assert exit.value.code == 0 and 'RESULTS.json' in capsys.readouterr().out
    one = training.Results('one', {'model': 'gine', 'dataset': 'd'}, 'rmse',
                           False)
    fill(one, {0: [0.5, 0.4]})
    arms = {arm: training.Results(arm, {}, 'rmse', False)
            for arm in ('flat', 'hsa')}
    for results in arms.values():
        fill(results, {0: [0.3, 0.2], 1: [0.6, 0.1]})
    args = type('Args', (), {'out': str(tmp_path)})()
    training.write_arms(arms, 'arms', args, torch.device('cpu'))
    files = [one.write(str(tmp_path)), str(tmp_path / 'arms.json')]
    capsys.readouterr()
    assert training.main(files + ['--plot', str(tmp_path / 'c.png')]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(' | ')[2] for r in rows] == ['gine', 'flat', 'hsa']
    assert (tmp_path / 'c.png').read_bytes()[:4] == b'\x89PNG'
    # A second file of arms of the same names: its rows name their file.
    (tmp_path / 'again').mkdir()
    training.write_arms(arms, 'again', type('Args', (), {
        'out': str(tmp_path / 'again')})(), torch.device('cpu'))
    files.append(str(tmp_path / 'again' / 'again.json'))
    assert training.main(files) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(' | ')[2] for r in rows] == [
        'gine', 'flat (arms.json)', 'hsa (arms.json)', 'flat (again.json)',
        'hsa (again.json)']
    assert [r['label'] for r in training.labelled_sets(files)] == [
        r.split(' | ')[2] for r in rows]
    for i, content in enumerate([{'verdict': 'ok'}, [1, 2], {
            'arms': {'a': {'runs': []}}, 'metric': 'acc'}]):
        other = tmp_path / f'other{i}.json'
        other.write_text(json.dumps(content))
        with pytest.raises(SystemExit):
            training.main([str(other)])
        assert f'other{i}.json is not a results file' in \
            capsys.readouterr().err


def test_single_process_is_the_identity(monkeypatch):
    dist = training.Distributed.from_env(False, 'cpu')
    assert not dist.enabled and dist.is_main and dist.world_size == 1
    index = torch.arange(7)
    assert torch.equal(dist.shard(index), index)
    assert torch.equal(dist.gather(index), index)
    assert dist.sum(2.0, 3.0) == [2.0, 3.0]
    assert dist.gather_objects('x') == ['x']
    assert dist.sampler(list(range(4))) is None
    threads = torch.get_num_threads()
    try:
        training.Distributed.from_env(False, 'cpu', threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    monkeypatch.delenv('RANK', raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        training.Distributed.from_env(True, 'cpu')


def _worker(rank: int, world_size: int, port: int, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist = training.Distributed.from_env(True, 'cpu')
    index = torch.arange(11)
    shard = dist.shard(index)  # 6 and 5 entries
    values = shard.double().view(-1, 1) * 10
    bn = torch.nn.BatchNorm1d(1)
    bn.running_mean.fill_(rank + 1.0)
    dist.broadcast_buffers(bn)
    sampler = dist.sampler(list(range(11)), shuffle=True, seed=0)
    result = {
        'shard': shard.tolist(),
        'gathered': dist.gather(shard).tolist(),
        'values': dist.gather(values).view(-1).tolist(),
        'empty': dist.gather(torch.arange(3) if rank == 0 else
                             torch.arange(0)).tolist(),
        'sum': dist.sum(1.0, float(rank)),
        'objects': dist.gather_objects(rank * 2),
        'running_mean': bn.running_mean.item(),
        'sampled': list(sampler),
        'threads': torch.get_num_threads(),
    }
    with open(os.path.join(out, f'{rank}.json'), 'w') as f:
        json.dump(result, f)
    dist.close()


def test_two_gloo_processes(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f'{r}.json').read_text())
             for r in range(2)]
    assert ranks[0]['shard'] == [0, 2, 4, 6, 8, 10]
    assert ranks[1]['shard'] == [1, 3, 5, 7, 9]
    for result in ranks:
        # Uneven shards come back whole, in rank order, on every rank.
        assert result['gathered'] == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9]
        assert result['values'] == [10.0 * i for i in result['gathered']]
        assert result['empty'] == [0, 1, 2]
        assert result['sum'] == [2.0, 1.0]
        assert result['objects'] == [0, 2]
        assert result['running_mean'] == 1.0  # rank 0's statistics
        assert result['threads'] == max(1, (os.cpu_count() or 1) // 2)
    # The sampler splits every epoch between the ranks (padding to even).
    sampled = ranks[0]['sampled'] + ranks[1]['sampled']
    assert len(ranks[0]['sampled']) == len(ranks[1]['sampled']) == 6
    assert set(sampled) == set(range(11))
