"""train.log in the run folder, and the library chatter kept off the console (dtr_scale/run_log.py)."""
import io
import logging
import warnings

import pytest

from dtr_scale.run_log import FILE_LOGGER, LOG_NAME, close_run_logging, setup_run_logging, start_run_log_file


@pytest.fixture
def deepspeed_like_logger():
    """A logger set up the way DeepSpeed sets up its own: INFO, its own stdout handler, no propagation."""
    stream = io.StringIO()
    logger = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    old = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.setLevel(old[0])
    logger.propagate = old[1]
    close_run_logging()


def test_chatter_goes_to_the_file_and_warnings_that_matter_to_the_console(tmp_path, deepspeed_like_logger):
    ds, ds_console = deepspeed_like_logger
    shown = []  # what reaches the warnings display that was in place before (the console)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        file_log = setup_run_logging(str(tmp_path), is_main=True)
        assert file_log is logging.getLogger(FILE_LOGGER) and not file_log.propagate
        ds.info("[INFO] [config.py:1] DeepSpeedEngine configuration: ...")
        ds.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        ds.warning("ZeRO stage 3 offload needs more memory")
        # Held until the run accepts its folder: nothing is written there before that.
        assert not (tmp_path / LOG_NAME).exists()
        start_run_log_file()
        logging.getLogger("dtr_scale").warning("a warning of ours")
        warnings.warn("torch.cuda.amp.custom_fwd(args...) is deprecated", FutureWarning)
        warnings.warn("this one matters", UserWarning)
        file_log.info("step 3/10 (30%) elapsed 1s eta 2s")
        close_run_logging()

    console = ds_console.getvalue()
    assert "DeepSpeedEngine configuration" not in console and "Setting accelerator" not in console
    assert "ZeRO stage 3 offload" in console  # a real DeepSpeed warning still shows
    assert shown == ["this one matters"]  # the harmless deprecation did not
    text = (tmp_path / LOG_NAME).read_text()
    for expected in ("DeepSpeedEngine configuration", "Setting accelerator", "a warning of ours",
                     "torch.cuda.amp", "this one matters", "step 3/10"):
        assert expected in text, expected


def test_other_ranks_write_no_file_and_drop_the_chatter(tmp_path, deepspeed_like_logger):
    ds, ds_console = deepspeed_like_logger
    assert setup_run_logging(str(tmp_path), is_main=False) is None
    ds.info("[INFO] chatter")
    close_run_logging()
    assert not (tmp_path / LOG_NAME).exists() and "chatter" not in ds_console.getvalue()


def test_a_run_that_never_accepts_its_folder_writes_no_file(tmp_path, deepspeed_like_logger):
    """A refused folder (another run's checkpoints) must be left as it was: no train.log."""
    ds, _ = deepspeed_like_logger
    setup_run_logging(str(tmp_path), is_main=True)
    ds.info("[INFO] chatter")
    logging.getLogger("dtr_scale").warning("refusing the folder")
    close_run_logging()
    assert list(tmp_path.iterdir()) == []
