"""parse_documents refuses bad input with every error, each pointing at file/doc/field/line."""

from __future__ import annotations

import textwrap

import pytest

from plait.model.load import ConfigError, FieldError, parse_documents


def errors_of(text: str, filename: str = "demo.yaml") -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        parse_documents(textwrap.dedent(text), filename)
    return info.value.errors


def only_error(text: str) -> FieldError:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


SERVICE = """\
apiVersion: plait/v1
kind: Service
metadata:
  name: orders
"""


def test_route_weight_error_matches_the_documented_example() -> None:
    text = SERVICE + textwrap.dedent("""\
        ---
        apiVersion: plait/v1
        kind: Route
        metadata:
          name: orders-split
        spec:
          service: orders
          rules:
            - backends:
                - subset: {version: v1}
                  weight: 90
                - subset: {version: v2}
                  weight: -1
        """)
    error = only_error(text)
    assert error == FieldError(
        file="demo.yaml",
        document=2,
        kind="Route",
        name="orders-split",
        field="spec.rules[0].backends[1].weight",
        line=17,
        message="must be >= 0",
    )
    assert str(error) == (
        "demo.yaml: document 2 (Route/orders-split): "
        "spec.rules[0].backends[1].weight: must be >= 0 (line 17)"
    )


def test_yaml_syntax_error_has_its_line() -> None:
    error = only_error(SERVICE + "---\nkind: Service\nmetadata: {name: [x\n")
    assert (error.file, error.document, error.field, error.kind) == ("demo.yaml", 2, "", None)
    assert error.line == 7
    assert error.message.startswith("invalid YAML: ")


def test_unclosed_bracket_says_where_it_opened() -> None:
    error = only_error("kind: Service\nmetadata: {name: orders,\n  labels: {}\n\n")
    assert error.line == 3  # the end of the text, not the line after it
    assert "while parsing a flow mapping that starts at line 2" in error.message


def test_syntax_error_still_reports_errors_in_earlier_documents() -> None:
    errors = errors_of("kind: Nope\n---\na: [\n")
    assert [(e.document, e.field) for e in errors] == [(1, "kind"), (2, "")]


def test_document_that_is_not_a_mapping() -> None:
    error = only_error(SERVICE + "---\n- just\n- a list\n")
    assert (error.document, error.field, error.line) == (2, "", 6)
    assert "must be a mapping" in error.message
    assert "a list" in error.message


def test_document_that_is_a_scalar() -> None:
    error = only_error("hello\n")
    assert (error.document, error.line) == (1, 1)
    assert "'hello'" in error.message


def test_missing_kind_lists_known_kinds() -> None:
    error = only_error("apiVersion: plait/v1\nmetadata: {name: orders}\n")
    assert (error.field, error.line, error.kind, error.name) == ("kind", 1, None, "orders")
    assert error.message == "is required: one of Policy, Route, Service"


def test_unknown_kind_lists_known_kinds_and_suggests() -> None:
    error = only_error("apiVersion: plait/v1\nkind: Servce\nmetadata: {name: orders}\n")
    assert (error.field, error.line, error.kind) == ("kind", 2, "Servce")
    assert "unknown kind 'Servce'" in error.message
    assert "Route, Service" in error.message
    assert "did you mean 'Service'?" in error.message


def test_kind_that_is_not_a_string() -> None:
    error = only_error("kind: [Service]\nmetadata: {name: orders}\n")
    assert (error.field, error.line, error.kind) == ("kind", 1, None)


def test_wrong_api_version() -> None:
    error = only_error("apiVersion: plait/v2\nkind: Service\nmetadata: {name: orders}\n")
    assert (error.field, error.line, error.kind, error.name) == (
        "apiVersion",
        1,
        "Service",
        "orders",
    )
    assert error.message == "must be 'plait/v1', got 'plait/v2'"


def test_unknown_field_lists_allowed_fields() -> None:
    error = only_error(SERVICE + "spec:\n  protocol: http\n  connect_timeot: 1s\n")
    assert (error.field, error.line) == ("spec.connect_timeot", 7)
    assert "'connect_timeot' is not an allowed field here" in error.message
    assert "allowed: protocol, ports, loadBalancer, connectTimeout" in error.message
    assert "did you mean 'connectTimeout'?" in error.message


def test_snake_case_field_names_are_refused_with_a_hint() -> None:
    error = only_error(SERVICE + "spec:\n  load_balancer: round_robin\n")
    assert (error.field, error.line) == ("spec.load_balancer", 6)
    assert "did you mean 'loadBalancer'?" in error.message


def test_unknown_top_level_field() -> None:
    error = only_error(SERVICE + "status: {}\n")
    assert (error.field, error.line) == ("status", 5)
    assert "allowed: apiVersion, kind, metadata, spec" in error.message


def test_bad_type() -> None:
    text = SERVICE + "spec:\n  ports:\n    - name: http\n      port: eighty\n"
    error = only_error(text)
    assert (error.field, error.line) == ("spec.ports[0].port", 8)
    assert error.message == "must be a whole number, got 'eighty'"


def test_bad_literal_lists_the_choices() -> None:
    error = only_error(SERVICE + "spec:\n  protocol: udp\n")
    assert (error.field, error.line) == ("spec.protocol", 6)
    assert error.message == "must be one of 'http', 'grpc' or 'tcp', got 'udp'"


def test_bad_duration() -> None:
    error = only_error(SERVICE + "spec:\n  connectTimeout: 5 seconds\n")
    assert (error.field, error.line) == ("spec.connectTimeout", 6)
    assert error.message == "expected a duration such as '250ms' or '5s', got '5 seconds'"


@pytest.mark.parametrize("value", ["0s", "-1", ".nan", ".inf", "true"])
def test_durations_that_are_not_positive_finite_times(value: str) -> None:
    error = only_error(SERVICE + f"spec:\n  connectTimeout: {value}\n")
    assert (error.field, error.line) == ("spec.connectTimeout", 6)


def test_missing_fields_are_all_reported_at_their_nearest_parent() -> None:
    text = "apiVersion: plait/v1\nkind: Route\nmetadata:\n  name: r\nspec:\n  rules: []\n"
    errors = errors_of(text + "---\n" + text.replace("name: r", "name: s"))
    assert [(e.document, e.field, e.line, e.message) for e in errors] == [
        (1, "spec.service", 5, "is required"),
        (1, "spec.rules", 6, "at least one rule is required"),
        (2, "spec.service", 12, "is required"),
        (2, "spec.rules", 13, "at least one rule is required"),
    ]


def test_missing_metadata_points_at_the_document() -> None:
    error = only_error("# a comment\n\napiVersion: plait/v1\nkind: Service\n")
    assert (error.field, error.line, error.message) == ("metadata", 3, "is required")


def test_model_level_check_points_at_the_object() -> None:
    text = SERVICE.replace("kind: Service", "kind: Route").replace("orders", "r") + (
        "spec:\n"
        "  service: orders\n"
        "  rules:\n"
        "    - match:\n"
        "        pathPrefix: /a\n"
        "        headers:\n"
        "          - name: x-canary\n"
    )
    error = only_error(text)
    assert (error.field, error.line) == ("spec.rules[0].match.headers[0]", 11)
    assert error.message == "give exactly one of 'exact', 'prefix' or 'present'"


def test_bad_label_value_type_names_the_key() -> None:
    error = only_error(SERVICE + "  labels:\n    app.io/tier: 3\n")
    assert (error.field, error.line) == ('metadata.labels["app.io/tier"]', 6)
    assert error.message == "must be a string, got 3"


def test_duplicate_names_of_one_kind() -> None:
    errors = errors_of(SERVICE + "---\n" + SERVICE)
    assert [(e.document, e.kind, e.name, e.field, e.line) for e in errors] == [
        (2, "Service", "orders", "metadata.name", 9)
    ]
    assert "already defined in document 1" in errors[0].message


def test_same_name_in_different_kinds_is_fine() -> None:
    route = "apiVersion: plait/v1\nkind: Route\nmetadata: {name: orders}\n"
    route += "spec: {service: orders, rules: [{}]}\n"
    assert len(parse_documents(SERVICE + "---\n" + route, "demo.yaml")) == 2


def test_yaml_1_1_booleans_and_dates_are_strings() -> None:
    text = SERVICE + "  labels: {on: yes, built: 2024-01-01, at: 12:30}\n"
    (svc,) = parse_documents(text, "demo.yaml")
    assert svc.metadata.labels == {"on": "yes", "built": "2024-01-01", "at": "12:30"}


def test_duplicate_yaml_keys_are_refused() -> None:
    error = only_error(SERVICE + "spec:\n  protocol: http\n  protocol: tcp\n")
    assert (error.field, error.line, error.kind, error.name) == (
        "spec.protocol",
        7,
        "Service",
        "orders",
    )
    assert "written twice" in error.message


def test_value_pyyaml_cannot_construct() -> None:
    error = only_error(SERVICE + "  labels: {built: !!timestamp 2001-13-45}\n")
    assert (error.document, error.line) == (1, 5)
    assert error.message.startswith("invalid YAML value")


def test_unprintable_character() -> None:
    error = only_error(SERVICE + "spec: {protocol: http\x07}\n")
    assert (error.line, error.document) == (5, 1)
    assert "not allowed" in error.message


def test_every_error_across_documents_is_reported_in_file_order() -> None:
    text = textwrap.dedent("""\
        apiVersion: plait/v1
        kind: Service
        metadata: {name: Orders}
        spec: {protocol: udp}
        ---
        kind: Gateway
        ---
        apiVersion: plait/v1
        kind: Route
        metadata: {name: r}
        spec:
          service: orders
          rules:
            - timeout: soon
        """)
    errors = errors_of(text)
    assert [(e.document, e.field, e.line) for e in errors] == [
        (1, "metadata.name", 3),
        (1, "spec.protocol", 4),
        (2, "kind", 6),
        (3, "spec.rules[0].timeout", 14),
    ]


def test_config_error_text_has_one_line_per_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_documents("kind: A\n---\nkind: B\n", "x.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("x.yaml: document 1 (A): kind: unknown kind 'A'")
    assert lines[1].endswith("(line 3)")
    body = info.value.to_dict()
    assert body["error"] == str(info.value)
    assert body["errors"][1] == {
        "file": "x.yaml",
        "document": 2,
        "kind": "B",
        "name": None,
        "field": "kind",
        "line": 3,
        "message": "unknown kind 'B': expected one of Policy, Route, Service",
    }


def test_field_error_text_without_document_or_line() -> None:
    error = FieldError("<current config>", 0, "Service", "orders", "", None, "in use")
    assert str(error) == "<current config>: Service/orders: in use"
