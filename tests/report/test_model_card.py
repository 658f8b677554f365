"""The model card says what its numbers count (no Ray)."""


def test_stopped_mid_epoch_run_is_labelled_as_such(tmp_path):
    from rmray.report.model_card import write_model_card

    summary = {"steps": 30, "epochs": 1, "train_pairs": 640, "eval_accuracy": 0.75}
    card = open(write_model_card(str(tmp_path), {"model_name_or_path": "m", "train_data": "d"}, summary, [])).read()
    assert "| epochs (started) | 1 |" in card
    assert "| pairs trained (pairs x epochs) | 640 |" in card
    assert "| eval_accuracy | 0.75 |" in card
