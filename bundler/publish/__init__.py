"""Publishing one image to many regions and accounts from a declarative plan (issue 18):
the plan, the accounts it reaches, the publish engine and retention (prune)."""
