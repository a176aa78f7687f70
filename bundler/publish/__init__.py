"""Publishing one image to many regions and accounts from a declarative plan (issue 18):
``ami-bundler publish PLAN.toml``, idempotent.

``plan`` reads and checks the plan (pure); ``accounts`` reaches each of its accounts (STS);
``state`` reads what each (account, region) already holds from AWS itself; ``engine``
publishes what is missing; ``prune`` is retention. See docs/publish.md.
"""
