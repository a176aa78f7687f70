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
