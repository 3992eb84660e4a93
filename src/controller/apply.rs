//! How the operator writes to the API server: objects and status by server-side apply with its field
//! manager; status guarded by a resourceVersion where a decision must not be applied twice from a stale
//! view; deletes that treat a missing object as done, and creates that treat an existing one as done.

use std::fmt::Debug;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FIELD_MANAGER, Result};

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `object` (which names itself).
pub async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    Ok(api
        .patch(name, &apply_params(), &Patch::Apply(object))
        .await?)
}

/// Server-side applies `status` (the whole status, or the part this manager owns) to the status
/// subresource. With `resource_version`, the write fails with a conflict unless the object is still at
/// that version. Returns the object as stored.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
    resource_version: Option<String>,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    Ok(api
        .patch_status(name, &apply_params(), &Patch::Apply(&patch))
        .await?)
}

/// Deletes an object; one that is already gone is fine.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates an object; `None` when one of that name exists (for a pod: the old one is still terminating,
/// and its deletion triggers the next reconcile).
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    match api.create(&PostParams::default(), object).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}
