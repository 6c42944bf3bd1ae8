import os.path as osp
import warnings

import pytest
import torch

from hsa_geo.datasets import NCITPSA

RDConfig = pytest.importorskip('rdkit.RDConfig')

NCI = osp.join(RDConfig.RDDataDir, 'NCI')
# The lines of first_5K.smi whose valences RDKit refuses.
UNPARSABLE = ['2110', '2917', '3249', '3402', '4563', '4650', '4651', '4844']


def read_rdkit_files():
    with open(osp.join(NCI, 'first_5K.smi')) as f:
        molecules = [line.split() for line in f if line.strip()]
    with open(osp.join(NCI, 'first_5k.tpsa.csv')) as f:
        lines = [line for line in f if line.strip()]
    return molecules, lines


def test_the_real_files(tmp_path):
    with pytest.warns(UserWarning, match='cannot parse 8 of the 4999'):
        dataset = NCITPSA(str(tmp_path), log=False)
    molecules, lines = read_rdkit_files()
    assert len(molecules) == 4999 and len(dataset) == 4991
    assert [c for c, _ in dataset.skipped] == UNPARSABLE
    assert dict(dataset.skipped) == {c: s for s, c in molecules
                                     if c in UNPARSABLE}
    kept = [(s, c) for s, c in molecules if c not in UNPARSABLE]
    assert [d.compound_id for d in dataset] == [c for _, c in kept]
    assert dataset[0].smiles == 'CC1=CC(=O)C=CC1=O'
    assert dataset[0].y.dtype == torch.float and dataset[0].y.shape == (1, 1)
    assert dataset[0].y.item() == pytest.approx(34.14)
    # Labels stay with their molecules past the skipped lines.
    tpsa = dict(line.strip().rsplit(',', 1) for line in lines[1:])
    for i in (0, 2500, 4990):
        assert dataset[i].y.item() == pytest.approx(
            float(tpsa[dataset[i].smiles]))
        assert dataset[i].x.dtype == torch.long
        assert dataset[i].x.size(1) == 9
        assert dataset[i].edge_attr.size(1) == 3
    assert repr(dataset) == "NCITPSA(4991, task_type='regression')"
    # Loaded back from the processed files: no warning, the same list.

    def fail(self):
        raise AssertionError('processed again')

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(NCITPSA, 'process', fail)
        warnings.simplefilter('error')
        again = NCITPSA(str(tmp_path), log=False)
    assert again.skipped == dataset.skipped and len(again) == 4991


def test_files_out_of_step(tmp_path):
    molecules, lines = read_rdkit_files()
    raw = tmp_path / 'nci_tpsa' / 'raw'
    raw.mkdir(parents=True)
    (raw / 'first_5K.smi').write_text(
        ''.join(f'{s}\t{c}\n' for s, c in molecules[:4]))
    # The header, then the values of lines 1, 3, 2, 4.
    (raw / 'first_5k.tpsa.csv').write_text(
        ''.join(lines[i] for i in (0, 1, 3, 2, 4)))
    with pytest.raises(ValueError, match='Line 2 of .* labels'):
        NCITPSA(str(tmp_path), log=False)
    (raw / 'first_5k.tpsa.csv').write_text(''.join(lines[:4]))
    with pytest.raises(ValueError, match='4 molecules but .* 3 values'):
        NCITPSA(str(tmp_path), log=False)


def test_a_line_without_identifier(tmp_path):
    molecules, lines = read_rdkit_files()
    raw = tmp_path / 'nci_tpsa' / 'raw'
    raw.mkdir(parents=True)
    (raw / 'first_5K.smi').write_text(
        f'{molecules[0][0]}\t{molecules[0][1]}\n{molecules[1][0]}\n')
    (raw / 'first_5k.tpsa.csv').write_text(''.join(lines[:3]))
    with pytest.raises(ValueError, match=r"Line 2 of .* is .*, but a line "
                       r"holds a SMILES and a compound identifier"):
        NCITPSA(str(tmp_path), log=False)
