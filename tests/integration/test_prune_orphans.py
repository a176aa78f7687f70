"""prune --plan after a stop between DeregisterImage and the bundle's deletion (the state a
signal there leaves: a whole bundle of an old generation that no AMI names): the re-run finds it
by the plan's naming and deletes it, and nothing else — not the kept generation's bundle, not a
bundle a non-plan AMI uses, not a folder an upload holds the lock of. Against the strict local
AWS, checked with plain boto3 clients."""

from __future__ import annotations

import datetime
import json
import uuid

from tests.integration.test_prune import Target, _publish
from tests.support.cli import run
from tests.support.s3kit import list_keys, plain_client
from tests.support.strictaws import ec2images
from tests.support.strictaws.accounts import BASE_ACCOUNT

REGION = "us-east-1"


def test_a_re_run_after_a_stop_between_deregister_and_delete_deletes_the_orphan_only(
        capsys, endpoint, tmp_path, signing_key):
    tag = uuid.uuid4().hex[:8]
    plan_name, bucket = f"orph-{tag}", f"orph-{tag}"
    s3, ec2 = plain_client("s3", endpoint, REGION), plain_client("ec2", endpoint, REGION)
    s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    plan = tmp_path / "plan.toml"
    plan.write_text(f'name = "{plan_name}"\nregions = ["{REGION}"]\nbucket = "{bucket}/amis"\n'
                    '[source]\nimage = "gone.img"\n[bundle]\nname = "img"\n'
                    f'[[accounts]]\nid = "{BASE_ACCOUNT}"\n')
    t = Target(BASE_ACCOUNT, REGION, None, s3, ec2, bucket)
    g1, g2 = f"{plan_name}-g1", f"{plan_name}-g2"
    for generation in (g1, g2):
        _publish(t, f"amis/{generation}", plan=plan_name, generation=generation, tmp=tmp_path,
                 signing_key=signing_key)
    # A bundle in the plan's naming that a non-plan AMI uses, and a folder under upload.
    _publish(t, f"amis/{plan_name}-g0", plan=None, generation="hand-made", tmp=tmp_path,
             signing_key=signing_key)
    s3.put_object(Bucket=bucket, Key=f"amis/{plan_name}-g5/img.part.0", Body=b"x" * 100)
    s3.put_object(Bucket=bucket, Key=f"amis/{plan_name}-g5/img.ami-bundler-lock", Body=b"{}")
    # g2 was registered after g1's bundle was written (as a publish does it; the stand-in's
    # clock has one-second steps, so say so), then the stop: g1 deregistered, its bundle left.
    written = s3.head_object(Bucket=bucket, Key=f"amis/{g1}/img.manifest.xml")["LastModified"]
    ec2images.set_creation_date(BASE_ACCOUNT, REGION, t.images[f"amis/{g2}"],
                                written + datetime.timedelta(seconds=2))
    ec2.deregister_image(ImageId=t.images[f"amis/{g1}"])
    before = list_keys(s3, bucket)
    orphan = {k for k in before if k.startswith(f"amis/{g1}/")}
    assert len(orphan) == 3  # its manifest and two parts

    args = ["prune", "--plan", str(plan), "--keep", "1", "--endpoint-url", endpoint, "--json"]
    code, out, err = run(capsys, *args, "--dry-run")
    assert code == 2, err
    data = json.loads(out)
    [target] = data["targets"]
    assert target["images"] == [] and target["kept"] == [g2]
    # g0 is a candidate too, but in use: kept and said so
    used, found = target["bundles"]
    assert used["orphan"] is True and used["state"] == "in-use"
    assert used["kept_for"] == [t.images[f"amis/{plan_name}-g0"]]
    assert found["orphan"] is True and found["state"] == "would-delete"
    assert found["image_location"] == f"{bucket}/amis/{g1}/img.manifest.xml"
    assert found["objects"] == 3 and data["bytes_freed"] == t.sizes[f"amis/{g1}"] == found["bytes"]
    assert list_keys(s3, bucket) == before

    code, out, err = run(capsys, *args[:-1])
    assert code == 0, err
    assert "(no AMI uses it): deleted" in out
    assert set(list_keys(s3, bucket)) == set(before) - orphan
    registered = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert {t.images[f"amis/{g2}"], t.images[f"amis/{plan_name}-g0"]} <= registered

    code, out, err = run(capsys, *args, "--dry-run")
    assert code == 0 and json.loads(out)["changed"] is False, err
