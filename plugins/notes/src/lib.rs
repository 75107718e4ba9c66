//! The notes plugin: private notes per user, in a database file of its own.

use serde::{Deserialize, Serialize};
use sovereign_plugin_sdk::{Error, Request, Response, Router, caller, db, export_plugin, params};

#[derive(Serialize, Deserialize)]
struct Note {
    id: i64,
    title: String,
    body: String,
    updated_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    title: String,
    #[serde(default)]
    body: String,
}

fn mine(id: i64) -> Result<Note, Error> {
    db::query_one(
        "SELECT id, title, body, updated_at FROM notes__notes WHERE id = ?1 AND owner = ?2",
        &params![id, caller().user_id],
    )?
    .ok_or_else(|| Error::NotFound(format!("no note {id}")))
}

fn list(_req: &Request) -> Result<Response, Error> {
    let notes: Vec<Note> = db::query_as(
        "SELECT id, title, body, updated_at FROM notes__notes WHERE owner = ?1 ORDER BY id",
        &params![caller().user_id],
    )?;
    Response::json(200, &notes)
}

fn create(req: &Request) -> Result<Response, Error> {
    let new: NoteBody = req.json()?;
    if new.title.trim().is_empty() {
        return Err(Error::BadRequest("title must not be empty".into()));
    }
    let r = db::execute(
        "INSERT INTO notes__notes (owner, title, body) VALUES (?1, ?2, ?3)",
        &params![caller().user_id, new.title.trim(), new.body],
    )?;
    Response::json(201, &mine(r.last_insert_id)?)
}

fn get(req: &Request) -> Result<Response, Error> {
    Response::json(200, &mine(req.param_as("id")?)?)
}

fn update(req: &Request) -> Result<Response, Error> {
    let id: i64 = req.param_as("id")?;
    let new: NoteBody = req.json()?;
    let r = db::execute(
        "UPDATE notes__notes SET title = ?3, body = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE id = ?1 AND owner = ?2",
        &params![id, caller().user_id, new.title.trim(), new.body],
    )?;
    if r.rows_affected == 0 {
        return Err(Error::NotFound(format!("no note {id}")));
    }
    Response::json(200, &mine(id)?)
}

fn delete(req: &Request) -> Result<Response, Error> {
    let id: i64 = req.param_as("id")?;
    let r = db::execute(
        "DELETE FROM notes__notes WHERE id = ?1 AND owner = ?2",
        &params![id, caller().user_id],
    )?;
    if r.rows_affected == 0 {
        return Err(Error::NotFound(format!("no note {id}")));
    }
    Ok(Response::empty(204))
}

fn router() -> Router {
    Router::new()
        .get("/notes", list)
        .post("/notes", create)
        .get("/notes/{id}", get)
        .put("/notes/{id}", update)
        .delete("/notes/{id}", delete)
}

export_plugin!(router);
