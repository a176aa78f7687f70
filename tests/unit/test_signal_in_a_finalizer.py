"""A signal whose handler runs inside a finalizer: Python ignores the ``Interrupted`` it
raises there ("Exception ignored in … __del__"), so the run goes on to the end. It must still
end as interrupted (exit 128+signal, the one-line error), never as a success — seen once as
"signalled, yet reported success" in test_signals_aws::test_install's walk under load, where
the signal reached the main thread while it was building boto3's clients."""

from __future__ import annotations

import os
import signal

import pytest

from bundler import api
from bundler.cli import main


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_lost_in_a_finalizer_still_ends_the_run_as_interrupted(tmp_path, monkeypatch,
                                                                       capsys):
    keygen = api.keygen

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the finalizer
            _ = [0]  # (a bytecode boundary after the kill, for the handler to run at)

    def keygen_with_a_finalizer(*args, **kwargs):
        Finalized()  # made and finalized at once
        return keygen(*args, **kwargs)

    monkeypatch.setattr(api, "keygen", keygen_with_a_finalizer)
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    code = main(["keygen", "--key", str(key), "--cert", str(cert), "--json"])
    out, err = capsys.readouterr()
    assert code == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == ("ami-bundler: error: interrupted by SIGTERM: stopped; "
                                            "nothing partial was kept")
    assert key.exists() and cert.exists()  # the run had gone on to its end
    assert out.count('"ok"') <= 1  # one JSON object on stdout, the run's result
