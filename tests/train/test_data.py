import pytest
from transformers import AutoTokenizer

from forgetbench.errors import ForgetbenchError
from forgetbench.train import data


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loss_covers_the_completion_only(tok):
    [ex] = data.tokenize([{"prompt": "Atenolol is used to treat", "completion": " high blood pressure\n"}], tok, 64)
    n_prompt = len(tok("Atenolol is used to treat")["input_ids"])
    assert ex.labels[:n_prompt] == (data.IGNORE_INDEX,) * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[n_prompt:-1]) == " high blood pressure\n"


def test_text_rows_learn_every_token_and_long_rows_are_cut(tok):
    [ex] = data.tokenize([{"text": "12+30=42"}], tok, 64)
    assert ex.labels == ex.input_ids
    [cut] = data.tokenize([{"text": "def add(a, b):\n    return a + b" * 10}], tok, 16)
    assert len(cut.input_ids) == 16 == len(cut.labels)


def examples(n, tag):
    return [data.Example((tag, i), (tag, i)) for i in range(n)]


def test_mixture_counts_epochs_on_target_and_mix_ratio_on_the_whole_stream():
    target, replay = examples(40, 1), examples(500, 2)
    stream = data.mixture(target, replay, epochs=2.5, mix_ratio=0.1, seed=0)
    n_target = sum(ex.input_ids[0] == 1 for ex in stream)
    n_replay = sum(ex.input_ids[0] == 2 for ex in stream)
    assert n_target == 100                     # 2.5 epochs of 40
    assert n_replay == round(100 * 0.1 / 0.9)  # 10% of the stream
    # two whole passes contain every target example twice
    assert all(sum(ex == t for ex in stream) >= 2 for t in target)
    assert data.mixture(target, replay, epochs=2.5, mix_ratio=0.1, seed=0) == stream
    assert data.mixture(target, replay, epochs=2.5, mix_ratio=0.1, seed=1) != stream
    assert all(ex.input_ids[0] == 1 for ex in data.mixture(target, replay, epochs=1, mix_ratio=0.0, seed=0))


def test_batches_pad_right_and_mask_padding(tok):
    exs = data.tokenize([{"text": "1+1=2"}, {"prompt": "The capital of France is", "completion": " Paris."}], tok, 64)
    [(ids, mask, labels)] = list(data.batches(exs, 8, tok.pad_token_id))
    n0 = len(exs[0].input_ids)
    assert ids.shape[0] == 2 and mask[0, :n0].all() and not mask[0, n0:].any()
    assert (labels[0, n0:] == data.IGNORE_INDEX).all()


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chat_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML
    return tok


def test_a_chat_row_learns_the_assistant_reply_and_its_end_of_turn_only(chat_tok):
    row = {"prompt": "What does atenolol treat?", "completion": "High blood pressure."}
    [ex] = data.tokenize([row], chat_tok, 128, chat=True)
    n = ex.labels.index(next(t for t in ex.labels if t != data.IGNORE_INDEX))
    # masked: what a chat evaluation (lm-eval's apply_chat_template) gives the model before it answers
    assert chat_tok.decode(ex.input_ids[:n]) == chat_tok.apply_chat_template(
        [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True)
    assert chat_tok.decode(ex.input_ids[:n]).startswith("<|im_start|>user\nWhat does atenolol treat?")
    assert ex.labels[n:] == ex.input_ids[n:]  # learned: the reply and the end of the turn, no EOS after it
    assert chat_tok.decode(ex.input_ids[n:]) == "High blood pressure.<|im_end|>\n"
    # text rows (replay) stay plain text
    assert data.tokenize([{"text": "12+30=42"}], chat_tok, 64, chat=True) == data.tokenize(
        [{"text": "12+30=42"}], chat_tok, 64)


def test_chat_training_needs_a_template_that_renders_the_prompt_as_the_conversations_start(tok, chat_tok):
    row = [{"prompt": "Q", "completion": "A"}]
    with pytest.raises(ForgetbenchError, match="tokenizer has no chat template"):
        data.tokenize(row, tok, 64, chat=True)
    # the generation prompt differs from how the assistant's turn is rendered: no clean split
    chat_tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}[bot] {% endif %}")
    with pytest.raises(ForgetbenchError, match="does not render a conversation as the prompt's rendering"):
        data.tokenize(row, chat_tok, 64, chat=True)


def test_a_chat_prompt_starts_with_bos_where_the_tokenizer_prepends_one_and_the_template_does_not():
    from transformers import LlamaTokenizer

    texts = ["What does atenolol treat?", "High blood pressure."] * 20
    tok = LlamaTokenizer(add_bos_token=True).train_new_from_iterator(texts, vocab_size=300)
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # (as Llama's own tokenizers do)
    row = [{"prompt": "What does atenolol treat?", "completion": "High blood pressure."}]
    tok.chat_template = CHATML  # no {{ bos_token }} in it
    [ex] = data.tokenize(row, tok, 128, chat=True)
    assert ex.input_ids[0] == tok.bos_token_id and list(ex.input_ids).count(tok.bos_token_id) == 1
    tok.chat_template = "{{ bos_token }}" + CHATML  # the template writes it: not twice
    [ex] = data.tokenize(row, tok, 128, chat=True)
    assert ex.input_ids[0] == tok.bos_token_id and list(ex.input_ids).count(tok.bos_token_id) == 1
