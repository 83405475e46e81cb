"""A stand-in for the Azure SDK's ``devtools_testutils`` (not published on PyPI), just enough for the official
``azure-keyvault-secrets`` test suite to run in *live* mode against ``keyvault serve``.

Live mode means no recording and no test proxy: every request of the suite goes to the server named by
``AZURE_KEYVAULT_URL``, authenticated by a ``ClientSecretCredential`` against the server's own token endpoint
(``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``, ``AZURE_AUTHORITY_HOST``), trusting the
server's CA certificate (``KEYVAULT_CA_CERT``). The sanitizer and matcher functions configure a recording proxy
that is not there, so they do nothing. ``run.py`` beside this package sets the variables.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os

import pytest

__all__ = [
    "AzureMgmtPreparer",
    "AzureRecordedTestCase",
    "add_body_key_sanitizer",
    "add_general_regex_sanitizer",
    "add_oauth_response_sanitizer",
    "add_remove_header_sanitizer",
    "is_live",
    "recorded_by_proxy",
    "remove_batch_sanitizers",
    "set_custom_default_matcher",
    "test_proxy",
]


def is_live() -> bool:
    """Always live: there are no recordings to play back."""
    return True


def _ca_cert() -> str:
    return os.environ["KEYVAULT_CA_CERT"]


class AzureRecordedTestCase:
    """The base class of the suite's test classes and preparers (the parts they call)."""

    @property
    def is_live(self) -> bool:
        return True

    def get_resource_name(self, name: str) -> str:
        """``name`` and a short digest of the running test's id: the same in every run of a test, different
        between tests (the sync and async tests use the same prefixes, and soft-deleted names stay taken)."""
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        return name + hashlib.sha256(test.encode()).hexdigest()[:8]

    def get_credential(self, client_class, is_async: bool = False, **kwargs):
        if is_async:
            from azure.identity.aio import ClientSecretCredential
        else:
            from azure.identity import ClientSecretCredential
        return ClientSecretCredential(
            os.environ["AZURE_TENANT_ID"],
            os.environ["AZURE_CLIENT_ID"],
            os.environ["AZURE_CLIENT_SECRET"],
            authority=os.environ["AZURE_AUTHORITY_HOST"],
            connection_verify=_ca_cert(),
            # MSAL would look the authority up at login.microsoftonline.com (not reachable, and not the
            # authority here); the async credential does not use MSAL and takes no such argument.
            **({} if is_async else {"disable_instance_discovery": True}),
        )

    def create_client_from_credential(self, client_class, credential, **kwargs):
        kwargs.setdefault("connection_verify", _ca_cert())
        # The suite's clients log requests and responses (its logging tests expect it unless a test turns it off).
        kwargs.setdefault("logging_enable", True)
        return client_class(credential=credential, **kwargs)

    def fail(self, message: str) -> None:
        pytest.fail(message)

    @staticmethod
    def await_prepared_test(test):
        """Runs an async test to its end in an event loop of its own (the suite's async tests are
        declared through this, not through pytest-asyncio)."""

        @functools.wraps(test)
        def run(*args, **kwargs):
            return asyncio.run(test(*args, **kwargs))

        return run


class AzureMgmtPreparer:
    """Imported by the suite's shared helpers; its resource-group machinery is not used by the secrets tests."""

    def __init__(self, *args, **kwargs) -> None:
        pass


def recorded_by_proxy(test):
    """Runs the test as it is (live: nothing recorded)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return test(*args, **kwargs)

    return run


def _nothing(*args, **kwargs) -> None:
    return None


set_custom_default_matcher = _nothing
add_oauth_response_sanitizer = _nothing
add_general_regex_sanitizer = _nothing
add_body_key_sanitizer = _nothing
add_remove_header_sanitizer = _nothing
remove_batch_sanitizers = _nothing


@pytest.fixture(scope="session")
def test_proxy():
    """The recording proxy's fixture: there is no proxy in live mode."""
    yield None
