"""aws.plain_dict_models: botocore's service models parsed into plain dicts load the same
models — the same operations, shapes and member order (the order request serialization
follows) — as botocore's own OrderedDict parsing, for every service the product calls."""

from __future__ import annotations

from collections import OrderedDict

import botocore.session
import pytest

from bundler.aws import AwsOptions, make_session, plain_dict_models


def _shapes(model):
    return {name: list(getattr(model.shape_for(name), "members", {}) or {})
            for name in model.shape_names}


@pytest.mark.parametrize("service", ["s3", "ec2", "sts"])
def test_plain_dicts_load_the_same_models(service):
    stock = botocore.session.Session()
    plain = botocore.session.Session()
    plain_dict_models(plain)
    raw = plain.get_component("data_loader").load_service_model(service, "service-2")
    assert type(raw) is dict and type(raw["shapes"]) is dict  # not OrderedDict
    assert not isinstance(raw, OrderedDict)
    ours, theirs = plain.get_service_model(service), stock.get_service_model(service)
    assert ours.operation_names == theirs.operation_names
    assert _shapes(ours) == _shapes(theirs)  # the member order requests are serialized in
    assert (plain.get_component("data_loader").load_data("endpoints")
            == stock.get_component("data_loader").load_data("endpoints"))


def test_the_sessions_the_product_makes_use_them():
    session = make_session(AwsOptions(region="us-east-1", access_key="AKIDEXAMPLE",
                                      secret_key="secret"))
    loader = session.get_component("data_loader")
    assert type(loader.load_service_model("s3", "service-2")) is dict
    client = session.create_client("s3", endpoint_url="http://127.0.0.1:9")
    assert client.meta.service_model.operation_model("PutObject").input_shape.members


_TYPES = ["service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"]


@pytest.mark.parametrize("type_name", _TYPES)
def test_services_on_demand_know_the_same_services(type_name):
    """Every service directory (and a few names that are none) is known on demand exactly when
    botocore's full listing has it."""
    import os

    from bundler.aws import services_on_demand

    stock = botocore.session.Session().get_component("data_loader")
    ours_session = botocore.session.Session()
    services_on_demand(ours_session)
    ours = ours_session.get_component("data_loader").list_available_services(type_name)
    listed = set(stock.list_available_services(type_name))
    data = os.path.join(os.path.dirname(botocore.__file__), "data")
    candidates = set(os.listdir(data)) | {"no-such-service", "", "s3x", 3}
    assert {n for n in candidates if n in ours} == listed
    assert sorted(ours) == sorted(listed) and len(ours) == len(listed)


def test_an_unknown_service_still_names_the_known_ones():
    from botocore.exceptions import UnknownServiceError

    session = make_session(AwsOptions(region="us-east-1", access_key="AKIDEXAMPLE",
                                      secret_key="secret"))
    with pytest.raises(UnknownServiceError, match=r"Valid service names are: .*\bs3\b"):
        session.create_client("no-such-service")


def test_the_product_s_session_does_not_walk_every_service(monkeypatch):
    """S3's client and its first paginator: a handful of directory listings, not ~900."""
    import os

    import botocore.loaders  # noqa: F401  (imported before the count starts)

    session = make_session(AwsOptions(region="us-east-1", access_key="AKIDEXAMPLE",
                                      secret_key="secret"))
    listed = []
    real = os.listdir

    def counting(path="."):
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    client = session.create_client("s3", endpoint_url="http://127.0.0.1:9")
    client.get_paginator("list_objects_v2")
    assert 0 < len(listed) < 20, listed[:30]
