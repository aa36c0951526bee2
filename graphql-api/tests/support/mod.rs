//! What the schema tests share: the API over fresh embedded backends in a temporary data directory, with
//! the processors a staff write needs running beside it, as in `orderflow serve`.

use std::sync::Arc;

use anyhow::Result;
use orderflow_graphql::ApiState;
use orderflow_ingest::Intake;
use orderflow_platform::Backends;
use orderflow_platform::backend::BackendOptions;
use orderflow_schemas::topics;
use tempfile::TempDir;
use tokio_util::sync::{CancellationToken, DropGuard};

pub(crate) struct Embedded {
    pub(crate) dir: TempDir,
    pub(crate) backends: Backends,
    pub(crate) state: ApiState,
    /// Stops the processors when the test ends.
    pub(crate) processors: DropGuard,
}

/// The API with the catalog projector (catalog reads see staff writes moments after them) and, when
/// `inventory` is set, the inventory processor, which applies staff stock changes (it is the one writer
/// of stock).
pub(crate) fn embedded(inventory: bool) -> Result<Embedded> {
    let dir = tempfile::tempdir()?;
    let backends = orderflow_embedded::open(dir.path(), &BackendOptions::default())?;
    let state = ApiState::new(
        backends.stores.clone(),
        backends.bus.clone(),
        Intake::new(backends.stores.clone(), backends.bus.clone()),
        orderflow_graphql::AuthMode::Open,
    );
    let projector = Arc::new(orderflow_processors::catalog::CatalogProjector {
        view: backends.stores.catalog_view.clone(),
        observer: Some(state.catalog.clone()),
    });
    let token = CancellationToken::new();
    let (bus, t) = (backends.bus.clone(), token.clone());
    tokio::spawn(async move { bus.consume(topics::groups::CATALOG_PROJECTOR, topics::CATALOG, projector, t).await });
    if inventory {
        let handler = Arc::new(orderflow_processors::inventory::InventoryHandler {
            inventory: backends.stores.inventory.clone(),
            bus: backends.bus.clone(),
            fences: orderflow_platform::fencing::PartitionFences::new(
                backends.stores.epochs.clone(),
                topics::groups::INVENTORY,
            ),
        });
        let (bus, t) = (backends.bus.clone(), token.clone());
        tokio::spawn(async move { bus.consume(topics::groups::INVENTORY, topics::INVENTORY, handler, t).await });
    }
    Ok(Embedded { dir, backends, state, processors: token.drop_guard() })
}

/// The caller of a test request: an admin (the admin token's role) or nobody.
pub(crate) fn caller(staff: bool) -> orderflow_graphql::Caller {
    if staff {
        orderflow_graphql::Caller::Admin(orderflow_graphql::Principal::new("test"))
    } else {
        orderflow_graphql::Caller::Anonymous
    }
}
