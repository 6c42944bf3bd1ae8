r"""Tiny HuggingFace encoders and tokenizers built inside the tests (no
download): BERT with a WordPiece tokenizer (``[CLS] ... [SEP]``) and
RoBERTa with a byte-level BPE tokenizer (``<s> ... </s>``), both trained
here on :data:`TEXTS`."""
import os

# Nothing may touch the network: transformers reads these at import.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import torch  # noqa: E402

#: Texts of one to three paragraphs, with abbreviations, hyphens and
#: punctuation, of different lengths (so that a batch is padded).
TEXTS = [
    'A cat sat on the mat. It slept well!\n\nThe end.',
    'Kullback-Leibler divergence measures closeness.',
    'Trees nest signals. A word attends to the words of its sentence; '
    'across sentences, a sentence is seen as a whole.\n\nOne level up, '
    'paragraphs attend to paragraphs. Is that fast? Yes.\n\nThe end.',
]


def _trained(kind: str):
    from tokenizers import (Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    from transformers import PreTrainedTokenizerFast
    if kind == 'bert':  # a fixed vocabulary: reproducible tokens
        tok = Tokenizer(models.WordPiece(_wordpiece_vocab(),
                                         unk_token='[UNK]'))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        cls, sep = tok.token_to_id('[CLS]'), tok.token_to_id('[SEP]')
        tok.post_processor = processors.TemplateProcessing(
            single='[CLS] $A [SEP]',
            special_tokens=[('[CLS]', cls), ('[SEP]', sep)])
        names = dict(pad_token='[PAD]', unk_token='[UNK]',
                     cls_token='[CLS]', sep_token='[SEP]')
    else:  # RoBERTa: byte-level BPE, 'Ġ' tokens, trimmed offsets
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ['<s>', '<pad>', '</s>', '<unk>']
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(TEXTS, trainer)
        tok.post_processor = processors.RobertaProcessing(
            ('</s>', tok.token_to_id('</s>')),
            ('<s>', tok.token_to_id('<s>')), trim_offsets=True)
        names = dict(pad_token='<pad>', unk_token='<unk>', bos_token='<s>',
                     eos_token='</s>', cls_token='<s>', sep_token='</s>')
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)


#: Words of :data:`TEXTS` left out of the WordPiece vocabulary, so that
#: they split into one token per character.
SPLIT_WORDS = ('slept', 'kullback', 'leibler', 'signals', 'paragraphs')


def _wordpiece_vocab():
    import string
    words = {w.strip(string.punctuation) for t in TEXTS
             for w in t.lower().split()}
    chars = sorted(set(string.ascii_lowercase) | set(string.punctuation))
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]'] + chars + \
        ['##' + c for c in string.ascii_lowercase] + \
        sorted(w for w in words - set(SPLIT_WORDS) - set(chars) if w)
    return {token: i for i, token in enumerate(dict.fromkeys(vocab))}


def bert_tokenizer():
    return _trained('bert')


def roberta_tokenizer():
    return _trained('roberta')


def tiny_model(kind: str, tokenizer, layers: int = 3, seed: int = 0):
    r"""A randomly initialised float32 ``BertModel`` or ``RobertaModel``:
    hidden size 32, 2 heads, :obj:`layers` layers, in eval mode."""
    import transformers
    config_class, model_class = {
        'bert': (transformers.BertConfig, transformers.BertModel),
        'roberta': (transformers.RobertaConfig, transformers.RobertaModel),
    }[kind]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=160, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Sharper attention than the initialisation's (~uniform), so that
    # a wrong tree shows in the outputs.
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, 'query') and hasattr(module, 'key'):
                module.query.weight.mul_(8)
                module.key.weight.mul_(8)
    return model


def word_level_tokenizer(words, truncate: bool = False):
    r"""A word-level ``tokenizers.Tokenizer`` with the ids of :obj:`words`
    in order (``'[UNK]'`` first); with :obj:`truncate`, padding and
    truncation switched on, as many ``tokenizer.json`` files ship."""
    import pytest
    tokenizers = pytest.importorskip('tokenizers')
    from tokenizers import models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(['[UNK]'] + list(words))}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if truncate:
        tok.enable_padding(length=16)
        tok.enable_truncation(16)
    return tok
