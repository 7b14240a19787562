"""Extract flow: fetch what changed on the shops' platforms into the landing folder, then ingest it exactly as
`crm ingest` does (docs/rules.md §11)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from crm import progress
from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.storage import partitions
from crm.sources import SourceError, extract
from flows.ingest import load_landing
from flows.retry import only_transient
from transforms.plan import parse_as_of


def retry_extract(task, task_run, state) -> bool:
    """A transient failure is retried (a locked database file, a network blip while writing), but not a platform
    that stayed unavailable: the provider has already retried it with backoff (Shopify 6 tries over ~30 s, TOP 6
    over ~60 s), a task retry would only make the command wait minutes longer, and the next scheduled run
    continues from the watermark anyway."""
    from crm.sources import SourceUnavailable

    try:
        state.result()
    except SourceUnavailable:
        return False
    except Exception:
        pass
    return only_transient(task, task_run, state)


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_extract)
def extract_shop(shop_id: str, db: str, config: str, landing_dir: str, as_of: str, since: str | None) -> dict:
    """One shop's extraction; retried on a transient failure (the platform down, the database held): a retry
    starts from the watermark the last written batch left."""
    logger = get_run_logger()
    return extract(db, partitions.scoped(load_settings(config)), shop_id, landing_dir, as_of=parse_as_of(as_of),
                   since=parse_as_of(since) if since else None, step=progress.step, log=logger.info)


@flow(name="extract", log_prints=False)
def extract_flow(db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG, shop: str | None = None,
                 landing_dir: str | None = None, since: str | None = None, as_of: str | None = None) -> dict:
    """Every shop with a [shops.source] (or only `shop`), then one ingest of the landing folder (default:
    landing/ beside the database). A shop whose extraction fails does not stop the others; what was fetched is
    ingested, then the first failure is raised."""
    logger = get_run_logger()
    settings = partitions.scoped(load_settings(config))
    landing = landing_dir or str(Path(db).parent / "landing")
    t = parse_as_of(as_of).isoformat()              # one T for every shop of the run
    if shop is not None and shop not in {s.shop_id for s in settings.shops}:
        raise SourceError(f"shop {shop!r}: no such shop in {config}")
    shops = [s.shop_id for s in settings.shops if s.source is not None and shop in (None, s.shop_id)]
    if not shops:
        logger.warning("no shop%s has a [shops.source]: nothing to extract", f" {shop!r}" if shop else "")
    results, failures = [], []
    for shop_id in shops:
        try:
            results.append(extract_shop(shop_id, db, config, landing, t, since))
        except SourceError as e:
            failures.append(e)
            logger.error("extract %s: %s", shop_id, e)
    Path(landing).mkdir(parents=True, exist_ok=True)
    ingest = load_landing(landing, db, config)
    logger.info("extract: %d shops, %d orders fetched; ingest: %d files new, %d rows loaded, %d quarantined",
                len(results), sum(r["orders"] for r in results), ingest["files_new"], ingest["rows_loaded"],
                ingest["rows_quarantined"])
    if failures:
        first = failures[0]
        if len(failures) > 1:
            first.args = (f"{first} (and {len(failures) - 1} more shops failed)",)
        raise first
    return {"as_of": t, "landing_dir": landing, "shops": results, "ingest": ingest}
