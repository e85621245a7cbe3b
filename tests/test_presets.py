"""The provider preset catalog: every shipped file loads and points at its provider's own
hosts, a broken file fails loudly naming the file and the key, and the catalog is listed
over HTTP without credentials or secrets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from flask_zis_connections import providers as provider_pkg
from flask_zis_connections.errors import ConfigurationError, InvalidValue
from flask_zis_connections.providers import PUBLIC_FIELDS, ProviderPreset, catalog, get_preset, load_presets

PRESET_DIR = Path(provider_pkg.__file__).parent
CATALOG_PATH = "/api/services/zis/connections/oauth/providers"

#: Registrable domains each provider's authorize and token endpoints must sit under.
PROVIDER_DOMAINS: dict[str, set[str]] = {
    "google": {"google.com", "googleapis.com"},
    "microsoft": {"microsoftonline.com"},
    "github": {"github.com"},
    "gitlab": {"gitlab.com"},
    "bitbucket": {"bitbucket.org"},
    "slack": {"slack.com"},
    "discord": {"discord.com"},
    "zoom": {"zoom.us"},
    "salesforce": {"salesforce.com"},
    "hubspot": {"hubspot.com", "hubapi.com"},
    "zendesk": {"zendesk.com"},
    "intercom": {"intercom.com", "intercom.io"},
    "atlassian": {"atlassian.com"},
    "linear": {"linear.app"},
    "asana": {"asana.com"},
    "notion": {"notion.com"},
    "airtable": {"airtable.com"},
    "dropbox": {"dropbox.com", "dropboxapi.com"},
    "box": {"box.com"},
    "xero": {"xero.com"},
    "quickbooks": {"intuit.com"},
    "shopify": {"myshopify.com"},
    "stripe": {"stripe.com"},
    "calendly": {"calendly.com"},
    "figma": {"figma.com"},
    "spotify": {"spotify.com"},
}

#: Where each provider publishes its developer docs (its own domain or its docs site).
DOC_DOMAINS: dict[str, set[str]] = {
    "google": {"google.com"},
    "microsoft": {"microsoft.com"},
    "github": {"github.com", "github.blog"},
    "gitlab": {"gitlab.com"},
    "bitbucket": {"atlassian.com"},
    "slack": {"slack.dev", "slack.com"},
    "discord": {"discord.com"},
    "zoom": {"zoom.us"},
    "salesforce": {"salesforce.com"},
    "hubspot": {"hubspot.com"},
    "zendesk": {"zendesk.com"},
    "intercom": {"intercom.com"},
    "atlassian": {"atlassian.com"},
    "linear": {"linear.app"},
    "asana": {"asana.com"},
    "notion": {"notion.com"},
    "airtable": {"airtable.com"},
    "dropbox": {"dropbox.com", "dropbox.tech"},
    "box": {"box.com"},
    "xero": {"xero.com"},
    "quickbooks": {"intuit.com"},
    "shopify": {"shopify.dev", "shopify.com"},
    "stripe": {"stripe.com"},
    "calendly": {"calendly.com"},
    "figma": {"figma.com"},
    "spotify": {"spotify.com"},
}

PRESETS = sorted(catalog().values(), key=lambda p: p.name)


def _host(url: str) -> str:
    probe = url.replace("{{subdomain}}", "sub")
    if probe.startswith("{{metadata."):
        probe = "https://metadata.invalid" + probe.split("}}", 1)[1]
    parts = urlsplit(probe)
    assert parts.scheme == "https", url
    assert parts.hostname, url
    return parts.hostname


def _under(host: str, domains: set[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def test_the_catalog_holds_every_required_provider() -> None:
    assert len(catalog()) >= 25
    assert set(PROVIDER_DOMAINS) <= set(catalog())
    # Every shipped preset is covered by the domain tables below.
    assert set(catalog()) <= set(PROVIDER_DOMAINS) and set(catalog()) <= set(DOC_DOMAINS)


def test_the_catalog_is_read_only_and_loaded_once() -> None:
    assert catalog() is catalog()
    with pytest.raises(TypeError):
        catalog()["evil"] = get_preset("github")  # type: ignore[index]
    with pytest.raises(TypeError):
        get_preset("notion").authorize_params["owner"] = "workspace"  # type: ignore[index]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_each_preset_is_well_formed(preset: ProviderPreset) -> None:
    assert (PRESET_DIR / f"{preset.name}.toml").is_file()
    assert preset.display_name and preset.quirks
    for url in (preset.auth_url, preset.token_url, preset.revocation_url, preset.api_base_url, preset.issuer):
        if url is not None:
            _host(url)
    for field in ("auth_url", "token_url", "revocation_url"):
        url = getattr(preset, field)
        if url is not None:
            assert _under(_host(url), PROVIDER_DOMAINS[preset.name]), (preset.name, field, url)
    assert preset.docs
    for doc in preset.docs:
        assert _under(_host(doc), DOC_DOMAINS[preset.name]), (preset.name, doc)
    options = preset.client_options()
    assert None not in options.values()
    assert {"auth_url", "token_url"} <= options.keys()
    assert not {"name", "display_name", "docs", "quirks"} & options.keys()


def test_client_options_are_fresh_plain_values() -> None:
    options = get_preset("dropbox").client_options()
    assert options["offline_access_params"] == {"token_access_type": "offline"}
    options["offline_access_params"]["token_access_type"] = "online"
    assert get_preset("dropbox").offline_access_params["token_access_type"] == "offline"
    domains = get_preset("quickbooks").client_options()["allowed_domains"]
    assert domains == ["sandbox-quickbooks.api.intuit.com"]
    domains.append("evil.test")
    assert get_preset("quickbooks").allowed_domains == ("sandbox-quickbooks.api.intuit.com",)
    # Only what the preset sets: no empty mappings, no unset fields.
    assert "token_params" not in options and "revocation_url" not in options
    merged = {**get_preset("zendesk").client_options(), "token_url": "http://127.0.0.1:1/token"}
    assert merged["token_url"] == "http://127.0.0.1:1/token"


def test_providers_with_documented_quirks_declare_them() -> None:
    assert get_preset("slack").scope_separator == ","
    assert get_preset("slack").ok_field == "ok"
    assert get_preset("salesforce").api_base_url == "{{metadata.instance_url}}"
    assert "instance_url" in get_preset("salesforce").metadata_from_token
    assert get_preset("salesforce").default_token_lifetime == 7200
    assert get_preset("quickbooks").metadata_from_callback == ("realmId",)
    assert get_preset("shopify").metadata_from_callback == ("shop",)
    assert get_preset("google").offline_access_params == {"access_type": "offline", "prompt": "consent"}
    assert get_preset("microsoft").offline_scopes == "offline_access"
    assert get_preset("airtable").pkce is True
    assert "{{subdomain}}" in get_preset("zendesk").auth_url
    assert "{{subdomain}}" in get_preset("microsoft").token_url


def test_an_unknown_preset_is_an_invalid_provider() -> None:
    with pytest.raises(InvalidValue) as info:
        get_preset("myspace")
    assert info.value.field == "provider"
    assert "myspace" in info.value.description and "hubspot" in info.value.description


GOOD = """
name = "acme"
display_name = "Acme"
docs = ["https://developer.acme.test/oauth"]
auth_url = "https://{{subdomain}}.acme.test/oauth/authorize"
token_url = "https://api.acme.test/oauth/token"
quirks = "None worth noting."
"""


def _write(tmp_path: Path, text: str, name: str = "acme") -> Path:
    (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_a_directory_of_good_files_loads(tmp_path: Path) -> None:
    presets = load_presets(_write(tmp_path, GOOD + 'api_base_url = "{{metadata.instance_url}}"\n'))
    assert list(presets) == ["acme"]
    assert presets["acme"].client_options()["api_base_url"] == "{{metadata.instance_url}}"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (GOOD + 'client_secret = "s3cr3t"\n', "client_secret", "not a preset key"),
        (GOOD.replace("https://api.acme.test", "http://api.acme.test"), "token_url", "https"),
        (GOOD.replace('quirks = "None worth noting."\n', ""), "quirks", "required"),
        (GOOD + 'scope_separator = ";"\n', "scope_separator", "one of"),
        (GOOD.replace('name = "acme"', 'name = "other"'), "name", "file's name"),
        (GOOD + "pkce = 1\n", "pkce", "true or false"),
        (GOOD + 'authorize_params = { scope = "all" }\n', "authorize_params", "'scope'"),
        (GOOD + 'token_params = { client_secret = "x" }\n', "token_params", "'client_secret'"),
        (GOOD + 'token_response_fields = { id_token = "a.b" }\n', "token_response_fields", "may only map"),
        (GOOD + 'metadata_from_callback = ["code"]\n', "metadata_from_callback", "'code'"),
        (GOOD.replace('["https://developer.acme.test/oauth"]', "[]"), "docs", "non-empty"),
        (GOOD.replace('["https://developer.acme.test/oauth"]', '["ftp://x.test/"]'), "docs", "https"),
        (GOOD + 'revocation_url = "https://{{tenant}}.acme.test/revoke"\n', "revocation_url", "placeholder"),
        (GOOD + 'issuer = "https://user:pw@acme.test"\n', "issuer", "credentials"),
        (GOOD + "default_token_lifetime = -5\n", "default_token_lifetime", "positive"),
    ],
)
def test_a_broken_file_fails_naming_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_presets(_write(tmp_path, text))
    message = str(info.value)
    assert "acme.toml" in message and repr(key) in message and problem in message


def test_a_file_that_is_not_toml_fails_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"acme\.toml"):
        load_presets(_write(tmp_path, "name = \n"))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_catalog_is_listed_without_credentials(client: FlaskClient) -> None:
    resp = client.get(CATALOG_PATH)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    listed = resp.get_json()["providers"]
    names = [entry["name"] for entry in listed]
    assert names == sorted(names) == sorted(catalog())
    for entry in listed:
        assert set(entry) == set(PUBLIC_FIELDS)
        assert not any("secret" in key or key in {"client_id", "access_token", "password"} for key in entry)
    hubspot = next(entry for entry in listed if entry["name"] == "hubspot")
    assert hubspot["token_url"] == get_preset("hubspot").token_url
    assert hubspot["docs"] == list(get_preset("hubspot").docs)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_catalog_is_limited_per_address(make_app: object) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")  # type: ignore[operator]
    client = app.test_client()
    assert [client.get(CATALOG_PATH).status_code for _ in range(3)] == [200, 200, 429]
