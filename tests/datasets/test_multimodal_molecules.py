import os.path as osp
import shutil

import pytest
import torch

from hsa_geo.datasets import ChEMBLActivity, MultiModalMolecules
from hsa_geo.datasets.scaffold_split import scaffold_split
from hsa_geo.nn import HeteroHSAConv
from hsa_geo.transforms import MoleculeHierarchy

Chem = pytest.importorskip('rdkit.Chem')
smiles2graph = pytest.importorskip('ogb.utils').smiles2graph
AtomEncoder = pytest.importorskip(
    'ogb.graphproppred.mol_encoder').AtomEncoder

BOND = ('atom', 'bond', 'atom')


def few(molecule):
    r"""24 of the 1,017 compounds, so that a test processes quickly."""
    return int(molecule.compound_id) % 40 == 0


def with_source(root, target):
    r"""A new root that holds the processed source of :obj:`root`, so that
    only the multi-modal items are processed there."""
    shutil.copytree(osp.join(root, 'chembl2321810'),
                    osp.join(target, 'chembl2321810'),
                    ignore=shutil.ignore_patterns('multimodal'))
    return str(target)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('multimodal'))


@pytest.fixture(scope='module')
def chembl(root):
    return ChEMBLActivity(root, log=False)


@pytest.fixture(scope='module')
def dataset(root, chembl):
    return MultiModalMolecules(root, pre_filter=few, log=False)


def by_compound(dataset):
    return {dataset.get(i).compound_id: dataset.get(i)
            for i in range(len(dataset))}


def test_leaf_types_and_shapes(dataset):
    assert len(dataset) == 24
    assert repr(dataset) == ("MultiModalMolecules(24, name='chembl', task="
                             "'regression', image_size=64, patch_size=8)")
    assert dataset.task_type == 'regression'
    assert dataset.eval_metric == 'rmse' and dataset.num_tasks == 1
    assert osp.isfile(osp.join(dataset.processed_dir,
                               'regression_image64_patch8.pt'))
    for data in dataset:
        assert data.leaf_types == ['atom', 'smiles', 'image']
        n, e = data['atom'].num_nodes, data[BOND].num_edges
        assert data['atom'].x.dtype == torch.long
        assert data['atom'].x.shape == (n, 9)
        assert data[BOND].edge_index.shape == (2, e)
        assert data[BOND].edge_attr.dtype == torch.long
        assert data[BOND].edge_attr.shape == (e, 3)
        tokens = data['smiles'].x
        assert tokens.dtype == torch.long and tokens.dim() == 1
        assert 0 < int(tokens.min())
        assert int(tokens.max()) < dataset.num_smiles_tokens
        image = data['image'].x
        assert image.dtype == torch.float and image.shape == (64, 192)
        assert data.y.dtype == torch.float and data.y.shape == (1, 1)
        assert isinstance(data['atom'].smiles, str)


def test_graph_and_tree_of_the_canonical_smiles(dataset, chembl):
    molecules = by_compound(chembl)
    for data in dataset:
        smiles = data['atom'].smiles
        raw = molecules[data.compound_id].smiles
        assert smiles == Chem.MolToSmiles(Chem.MolFromSmiles(raw))
        graph = smiles2graph(smiles)
        assert data['atom'].x.tolist() == graph['node_feat'].tolist()
        assert data[BOND].edge_index.tolist() == \
            graph['edge_index'].tolist()
        assert data[BOND].edge_attr.tolist() == graph['edge_feat'].tolist()
        # The atoms' groups are MoleculeHierarchy's.
        n = data['atom'].num_nodes
        alone = MoleculeHierarchy()(smiles).hierarchy.parent[:n]
        joined = data.hierarchy.parent[:n]
        assert groups(alone) == groups(joined)


def groups(parent):
    out = {}
    for leaf, cluster in enumerate(parent.tolist()):
        out.setdefault(cluster, []).append(leaf)
    return sorted(out.values())


def test_labels_are_chembl_activity_s(root, dataset, chembl):
    molecules = by_compound(chembl)
    for data in dataset:
        assert torch.equal(data.y, molecules[data.compound_id].y)
    # Another task and image size: files of their own under one root.
    other = MultiModalMolecules(root, task='classification', threshold=7.0,
                                image_size=32, patch_size=16,
                                pre_filter=few, log=False)
    assert other.task_type == 'binary classification'
    assert other.eval_metric == 'rocauc'
    assert repr(other) == (
        "MultiModalMolecules(24, name='chembl', task='classification', "
        "threshold=7.0, image_size=32, patch_size=16)")
    assert osp.isfile(osp.join(other.processed_dir,
                               'classification_7.0_image32_patch16.pt'))
    with pytest.raises(ValueError, match=(
            r"'classification_7\.0_image32_patch16\.pt' .* made with "
            r"pre_filter=<function few>, but pre_filter=None was given")):
        MultiModalMolecules(root, task='classification', threshold=7.0,
                            image_size=32, patch_size=16, log=False)
    actives = by_compound(ChEMBLActivity(root, task='classification',
                                         threshold=7.0, log=False))
    assert len(other) == len(dataset)
    for data in other:
        assert data.y.dtype == torch.long
        assert torch.equal(data.y, actives[data.compound_id].y)
        assert data['image'].x.shape == (4, 16 * 16 * 3)
    # The vocabulary is the whole set's, whatever the options.
    assert other.smiles_vocabulary == dataset.smiles_vocabulary


def test_smiles_tokens_round_trip(dataset):
    vocabulary = dataset.smiles_vocabulary
    assert vocabulary[0] == '[PAD]'
    assert dataset.num_smiles_tokens == len(vocabulary)
    assert len(set(vocabulary)) == len(vocabulary)
    for data in dataset:
        tokens = [vocabulary[i] for i in data['smiles'].x.tolist()]
        assert ''.join(tokens) == data['atom'].smiles
    assert MultiModalMolecules.tokenize(
        'C[C@@H](Cl)c1ccc(Br)cc1[N+](=O)[O-]') == [
            'C', '[C@@H]', '(', 'Cl', ')', 'c', '1', 'c', 'c', 'c', '(',
            'Br', ')', 'c', 'c', '1', '[N+]', '(', '=', 'O', ')', '[O-]']
    assert MultiModalMolecules.tokenize('C%12CC%12') == [
        'C', '%12', 'C', 'C', '%12']
    with pytest.raises(ValueError, match=r"character 2 \('i'\) of SMILES "
                                         r"'CSi' starts no SMILES token"):
        MultiModalMolecules.tokenize('CSi')


def test_smiles_tree_is_the_branches(dataset):
    vocabulary = dataset.smiles_vocabulary
    for data in dataset:
        tokens = [vocabulary[i] for i in data['smiles'].x.tolist()]
        rows = data.leaf_slices['smiles']
        hierarchy = data.hierarchy
        depth = hierarchy.node_depth[rows].tolist()
        level = 0  # the branches around a token, its own parentheses in
        for token, d in zip(tokens, depth):
            level += token == '('
            assert d == 2 + level  # root, the SMILES, the branches
            level -= token == ')'
        members = groups(hierarchy.parent[rows])
        for leaves in members:
            span = [tokens[i] for i in leaves]
            if span[0] == '(':  # a branch: its parentheses at both ends
                assert span[-1] == ')'
        assert sum(span[0] == '(' for span in (
            [tokens[i] for i in leaves] for leaves in members)) == \
            tokens.count('(')


def test_depiction_is_drawn_and_deterministic(root, dataset, tmp_path):
    for data in dataset:
        pixels = data['image'].x.view(64, 3, 8, 8)
        assert 0 <= float(pixels.min()) and float(pixels.max()) == 1
        drawn = (pixels < 0.9).any(dim=1)
        assert 0.02 < drawn.float().mean() < 0.5
        # RGB: heteroatoms are coloured.
        assert bool((pixels[:, 0] - pixels[:, 2]).abs().gt(0.2).any())
    again = MultiModalMolecules(with_source(root, tmp_path), pre_filter=few,
                                log=False)
    for first, second in zip(dataset, again):
        for t in first.leaf_types:
            assert torch.equal(first[t].x, second[t].x)
        assert torch.equal(first.hierarchy.parent, second.hierarchy.parent)


def test_one_root_over_the_modalities(dataset):
    for data in dataset:
        hierarchy = data.hierarchy
        assert hierarchy.num_trees == 1
        parent = hierarchy.parent
        root = int((parent == -1).nonzero())
        children = (parent == root).nonzero().view(-1)
        modality = data.node_modality()
        assert sorted(modality[children].tolist()) == [0, 1, 2]
        assert (modality == 3).nonzero().view(-1).tolist() == [root]


def test_batch_through_hetero_hsa_conv(dataset):
    from torch_geometric.loader import DataLoader

    split = dataset.get_idx_split('random', seed=1)
    loader = DataLoader(dataset[split['train']], batch_size=5)
    batch = next(iter(loader))
    assert batch.num_graphs == 5 and batch.y.shape == (5, 1)
    hierarchy = batch.hierarchy
    assert hierarchy.num_trees == 5
    assert hierarchy.num_leaves == sum(
        batch[t].num_nodes for t in batch.leaf_types)
    assert batch.get_example(2).hierarchy.num_leaves == \
        dataset[int(split['train'][2])].hierarchy.num_leaves

    torch.manual_seed(0)
    embed = {
        'atom': AtomEncoder(16),
        'smiles': torch.nn.Embedding(dataset.num_smiles_tokens, 16,
                                     padding_idx=0),
        'image': torch.nn.Linear(8 * 8 * 3, 16)}
    x_dict = {t: embed[t](batch[t].x) for t in batch.leaf_types}
    conv = HeteroHSAConv(16, 8, batch.leaf_types, heads=2)
    out = conv(x_dict, batch)
    for t in batch.leaf_types:
        assert out[t].shape == (batch[t].num_nodes, 16)
    sum(y.sum() for y in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_splits(dataset, chembl):
    for kind in ('scaffold', 'random'):
        split = dataset.get_idx_split(kind)
        assert torch.equal(torch.cat(list(split.values())).sort().values,
                           torch.arange(len(dataset)))
    # Canonical SMILES have the scaffolds of the raw file's.
    raw = by_compound(chembl)
    ours = dataset.get_idx_split('scaffold')
    theirs = scaffold_split([raw[data.compound_id].smiles
                             for data in dataset])
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="'split' must be 'scaffold' or "):
        dataset.get_idx_split('stratified')


def test_bad_arguments(root, tmp_path):
    with pytest.raises(ValueError, match=r"'name' must be one of "
                                         r"\('chembl',\), got 'zinc'"):
        MultiModalMolecules(root, name='zinc')
    with pytest.raises(ValueError, match=r"'task' must be one of "
                                         r"\('regression', 'classification'"):
        MultiModalMolecules(root, task='ranking')
    with pytest.raises(ValueError, match=r"'image_size' \(60\) must be a "
                                         r"multiple of 'patch_size' \(8\)"):
        MultiModalMolecules(root, image_size=60)
    with pytest.raises(TypeError, match="'patch_size' must be an int"):
        MultiModalMolecules(root, patch_size=8.0)
    with pytest.raises(TypeError, match="'threshold'"):
        MultiModalMolecules(root, task='classification', threshold='6')
    with pytest.raises(ValueError, match="'pre_filter' kept none of the "
                                         "1017 molecules"):
        MultiModalMolecules(with_source(root, tmp_path),
                            pre_filter=lambda molecule: False, log=False)
