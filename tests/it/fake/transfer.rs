//! `/filesystem/{system}/transfer/*` and the fake S3 behind it: presigned
//! looking URLs on the fake's own `/s3/...` routes, multipart part PUTs with
//! ETags, CompleteMultipartUpload, ranged GETs, and the transfer jobs that
//! move objects in and out of the real file tree.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fsops::FsCtx;
use super::http::{Request, Response};
use super::jobs::{self, Final, TransferWork};
use super::{error_body, error_body_user, JobKind, State};

/// A multipart upload in progress.
pub(crate) struct S3Upload {
    pub key: String,
    pub parts: BTreeMap<u32, (String, Vec<u8>)>,
}

fn uuid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn etag(data: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(data))[..32])
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn presign(base: &str, key: &str, extra: &str) -> String {
    let sig = hex::encode(Sha256::digest(format!("{key}{extra}").as_bytes()));
    let path: Vec<String> = key.split('/').map(encode_segment).collect();
    format!(
        "{base}/s3/{}?{extra}X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=f7t-access-key%2F20261129%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261129T010040Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}",
        path.join("/")
    )
}

fn s3_error(status: u16, code: &str, message: &str) -> Response {
    Response::new(
        status,
        "application/xml",
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>").into_bytes(),
    )
}

fn log_paths(user_dir: &str) -> (String, String) {
    let u = uuid();
    (
        format!("{user_dir}/.f7t_file_handling_job_{u}.log"),
        format!("{user_dir}/.f7t_file_handling_job_error_{u}.log"),
    )
}

fn transfer_job(system: &str, id: u64, user_dir: &str, logs: &(String, String)) -> Value {
    json!({"jobId": id.to_string(), "system": system, "workingDirectory": user_dir,
           "logs": {"outputLog": logs.0, "errorLog": logs.1}})
}

fn s3_method(body: &Value) -> Result<(), Response> {
    let method = body
        .pointer("/transferDirectives/transferMethod")
        .or_else(|| body.pointer("/transfer_directives/transfer_method"))
        .and_then(Value::as_str);
    if method == Some("s3") {
        Ok(())
    } else {
        Err(Response::json(
            400,
            &error_body_user("Requested transfer method is not available."),
        ))
    }
}

/// Everything a transfer route needs besides the state.
pub struct TransferCtx<'a> {
    pub fs: &'a FsCtx,
    pub base_url: &'a str,
    pub user_dir: &'a str,
    pub max_part_size: u64,
}

/// `POST /filesystem/{system}/transfer/upload`.
pub fn upload(st: &mut State, cx: &TransferCtx, req: &Request) -> Response {
    let Some(body) = serde_json::from_slice::<Value>(&req.body).ok() else {
        return Response::json(400, &error_body_user("invalid request body"));
    };
    if let Err(r) = s3_method(&body) {
        return r;
    }
    let raw = body.get("path").and_then(Value::as_str).unwrap_or("");
    let target = match cx.fs.resolve(raw) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(size) = body
        .pointer("/transferDirectives/fileSize")
        .or_else(|| body.pointer("/transferDirectives/file_size"))
        .and_then(Value::as_u64)
    else {
        return Response::json(
            500,
            &error_body(
                "(\"unsupported operand type(s) for /: 'NoneType' and 'int'\",)",
                None,
            ),
        );
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let key = format!("ciuser/{}/{name}", uuid());
    let upload_id: String = (0..40)
        .map(|_| rand::thread_rng().sample(rand::distributions::Alphanumeric) as char)
        .collect();
    let parts = size.div_ceil(cx.max_part_size).max(1);
    let urls: Vec<String> = (1..=parts)
        .map(|n| {
            presign(
                cx.base_url,
                &key,
                &format!("uploadId={upload_id}&partNumber={n}&"),
            )
        })
        .collect();
    let complete = presign(cx.base_url, &key, &format!("uploadId={upload_id}&"));
    st.uploads.insert(
        upload_id,
        S3Upload {
            key: key.clone(),
            parts: BTreeMap::new(),
        },
    );
    let logs = log_paths(cx.user_dir);
    let id = jobs::submit_transfer(
        st,
        JobKind::TransferUpload,
        "IngressFileTransfer",
        cx.user_dir,
        logs.clone(),
        TransferWork::Ingress { key, target },
    );
    Response::json(
        201,
        &json!({"transferJob": transfer_job(&cx.fs.system, id, cx.user_dir, &logs),
                "transferDirectives": {"transferMethod": "s3", "partsUploadUrls": urls,
                                       "completeUploadUrl": complete, "maxPartSize": cx.max_part_size}}),
    )
}

/// `POST /filesystem/{system}/transfer/download`.
pub fn download(st: &mut State, cx: &TransferCtx, req: &Request) -> Response {
    let Some(body) = serde_json::from_slice::<Value>(&req.body).ok() else {
        return Response::json(400, &error_body_user("invalid request body"));
    };
    if let Err(r) = s3_method(&body) {
        return r;
    }
    let raw = body.get("path").and_then(Value::as_str).unwrap_or("");
    let source = match cx.fs.resolve(raw) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !source.exists() {
        return Response::json(
            404,
            &error_body_user(&format!(
                "Remote process failed with exit status:1 and error message:stat: cannot statx '{raw}': No such file or directory"
            )),
        );
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let key = format!("ciuser/{}/{name}", uuid());
    let url = presign(cx.base_url, &key, "");
    let logs = log_paths(cx.user_dir);
    let id = jobs::submit_transfer(
        st,
        JobKind::TransferDownload,
        "OutgressFileTransfer",
        cx.user_dir,
        logs.clone(),
        TransferWork::Outgress { key, source },
    );
    Response::json(
        201,
        &json!({"transferJob": transfer_job(&cx.fs.system, id, cx.user_dir, &logs),
                "transferDirectives": {"transferMethod": "s3", "downloadUrl": url}}),
    )
}

/// `DELETE /filesystem/{system}/transfer/rm?path=`.
pub fn remove(st: &mut State, cx: &TransferCtx, req: &Request) -> Response {
    let Some(raw) = req.query("path") else {
        return Response::json(
            400,
            &error_body_user(
                "Unable to decode request and retreive the required path or source_path parameter.",
            ),
        );
    };
    let path = match cx.fs.resolve(raw) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let logs = log_paths(cx.user_dir);
    let id = jobs::submit_transfer(
        st,
        JobKind::TransferRemove,
        "RemoveFiles",
        cx.user_dir,
        logs.clone(),
        TransferWork::Remove { path },
    );
    Response::json(
        200,
        &json!({"transferJob": transfer_job(&cx.fs.system, id, cx.user_dir, &logs)}),
    )
}

/// The `/s3/<bucket>/<key>` routes.
pub fn s3(st: &mut State, req: &Request) -> Response {
    let key = percent_decode(req.path.trim_start_matches("/s3/"));
    if req.query("X-Amz-Signature").is_none() {
        return s3_error(403, "AccessDenied", "Request has no signature");
    }
    let upload_id = req.query("uploadId").map(str::to_string);
    match (req.method.as_str(), upload_id) {
        ("PUT", Some(uid)) => {
            let Some(part) = req.query("partNumber").and_then(|p| p.parse::<u32>().ok()) else {
                return s3_error(400, "InvalidArgument", "partNumber missing");
            };
            if st.uploads.get(&uid).is_none_or(|u| u.key != key) {
                return s3_error(
                    404,
                    "NoSuchUpload",
                    "The specified multipart upload does not exist.",
                );
            }
            if st.faults.part_put_fails(&uid, part) {
                return s3_error(
                    500,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                );
            }
            let tag = etag(&req.body);
            if let Some(u) = st.uploads.get_mut(&uid) {
                u.parts.insert(part, (tag.clone(), req.body.clone()));
            }
            Response::new(200, "text/html; charset=utf-8", Vec::new()).with_header("etag", &tag)
        }
        ("POST", Some(uid)) => {
            let Some(up) = st.uploads.get(&uid).filter(|u| u.key == key) else {
                return s3_error(
                    404,
                    "NoSuchUpload",
                    "The specified multipart upload does not exist.",
                );
            };
            let text = String::from_utf8_lossy(&req.body);
            let mut listed = Vec::new();
            for part in text.split("<Part>").skip(1) {
                let field = |tag: &str| {
                    part.split(&format!("<{tag}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{tag}>")).next())
                        .map(|s| s.replace("&quot;", "\"").trim().to_string())
                };
                let n = field("PartNumber").and_then(|n| n.parse::<u32>().ok());
                match (n, field("ETag")) {
                    (Some(n), Some(e)) => listed.push((n, e)),
                    _ => {
                        return s3_error(
                            400,
                            "MalformedXML",
                            "The XML you provided was not well-formed.",
                        )
                    }
                }
            }
            if listed.is_empty() {
                return s3_error(
                    400,
                    "MalformedXML",
                    "The XML you provided was not well-formed.",
                );
            }
            if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
                return s3_error(
                    400,
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order.",
                );
            }
            let mut object = Vec::new();
            for (n, e) in &listed {
                match up.parts.get(n) {
                    Some((tag, data)) if tag == e => object.extend_from_slice(data),
                    _ => {
                        return s3_error(
                            400,
                            "InvalidPart",
                            "One or more of the specified parts could not be found.",
                        )
                    }
                }
            }
            let whole = format!(
                "\"{}-{}\"",
                &hex::encode(Sha256::digest(&object))[..32],
                listed.len()
            );
            let (bucket, k) = key.split_once('/').unwrap_or(("ciuser", &key));
            st.objects.insert(key.clone(), object);
            st.uploads.remove(&uid);
            Response::new(
                200,
                "application/xml",
                format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>http://{bucket}.s3.amazonaws.com/{k}</Location><Bucket>{bucket}</Bucket><Key>{k}</Key><ETag>{whole}</ETag></CompleteMultipartUploadResult>").into_bytes(),
            )
        }
        ("GET", None) => {
            let Some(obj) = st.objects.get(&key) else {
                return s3_error(404, "NoSuchKey", "The specified key does not exist.");
            };
            let tag = etag(obj);
            let len = obj.len();
            let range = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'));
            match range {
                None => {
                    Response::new(200, "binary/octet-stream", obj.clone()).with_header("etag", &tag)
                }
                Some((from, to)) => {
                    let from: usize = from.parse().unwrap_or(0);
                    let to: usize = to
                        .parse()
                        .map(|t: usize| t.min(len.saturating_sub(1)))
                        .unwrap_or(len.saturating_sub(1));
                    if from >= len || to < from {
                        return s3_error(
                            416,
                            "InvalidRange",
                            "The requested range is not satisfiable",
                        )
                        .with_header("content-range", &format!("bytes */{len}"));
                    }
                    Response::new(206, "binary/octet-stream", obj[from..=to].to_vec())
                        .with_header("etag", &tag)
                        .with_header("content-range", &format!("bytes {from}-{to}/{len}"))
                        .with_header("accept-ranges", "bytes")
                }
            }
        }
        _ => s3_error(
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        ),
    }
}

/// Runs a due transfer job's work; None while it must keep waiting (the
/// upload object is not complete yet).
/// `fail`: the error an upload's transfer job meets once its object is
/// there (see `FakeFirecrest::fail_transfers`).
pub fn run_work(
    work: &TransferWork,
    id: u64,
    (out_log, err_log): (&str, &str),
    objects: &mut HashMap<String, Vec<u8>>,
    fail: Option<&str>,
) -> Option<Final> {
    let result: Result<String, String> = match work {
        TransferWork::Ingress { key, .. } if fail.is_some() => {
            objects.get(key)?;
            Err(fail.unwrap_or_default().to_string())
        }
        TransferWork::Ingress { key, target } => {
            let data = objects.get(key)?;
            // The real upload script leaves an empty `tmp/` beside its logs.
            if let Some(dir) = Path::new(out_log).parent() {
                let _ = fs::create_dir_all(dir.join("tmp"));
            }
            fs::write(target, data)
                .map(|_| {
                    let _ = fs::set_permissions(target, fs::Permissions::from_mode(0o644));
                    objects.remove(key);
                    format!("moved s3 object {key} to {}", target.display())
                })
                .map_err(|e| format!("cannot write {}: {e}", target.display()))
        }
        TransferWork::Outgress { key, source } => fs::read(source)
            .map(|d| {
                objects.insert(key.clone(), d);
                format!("copied {} to s3 object {key}", source.display())
            })
            .map_err(|e| format!("cannot read {}: {e}", source.display())),
        TransferWork::Remove { path } => {
            let r = if Path::new(path).is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            r.map(|_| format!("removed {}", path.display()))
                .map_err(|e| format!("rm: cannot remove '{}': {e}", path.display()))
        }
    };
    let (out, err, f) = match result {
        Ok(msg) => (
            msg,
            String::new(),
            Final {
                state: "COMPLETED".into(),
                exit: 0,
                signal: 0,
                task: Some(("COMPLETED".into(), 0, 0)),
            },
        ),
        Err(msg) => (
            String::new(),
            msg,
            Final {
                state: "FAILED".into(),
                exit: 1,
                signal: 0,
                task: Some(("FAILED".into(), 1, 0)),
            },
        ),
    };
    let _ = fs::write(out_log, format!("transfer job {id}\n{out}\n"));
    let _ = fs::write(
        err_log,
        if err.is_empty() {
            String::new()
        } else {
            format!("{err}\n")
        },
    );
    Some(f)
}
