//! The tasks plugin: lists and tasks, assignees shown with their display name from the
//! mirrored users table, `task.completed` events for the core.

use serde::{Deserialize, Serialize};
use sovereign_plugin_sdk::{
    Error, Request, Response, Router, caller, db, events, export_plugin, log, params,
};

#[derive(Serialize, Deserialize)]
struct Task {
    id: i64,
    list_id: Option<i64>,
    title: String,
    assignee: Option<i64>,
    assignee_name: Option<String>,
    assignee_avatar: Option<String>,
    #[serde(deserialize_with = "sovereign_plugin_sdk::int_bool")]
    done: bool,
    created_at: String,
}

const SELECT_TASKS: &str =
    "SELECT t.id, t.list_id, t.title, t.assignee, u.display_name AS assignee_name,
            u.avatar_url AS assignee_avatar, t.done, t.created_at
     FROM tasks__tasks t LEFT JOIN core__users u ON u.id = t.assignee";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTask {
    title: String,
    #[serde(default)]
    assignee: Option<i64>,
    #[serde(default)]
    list_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewList {
    name: String,
}

#[derive(Serialize, Deserialize)]
struct List {
    id: i64,
    name: String,
    owner: i64,
    created_at: String,
}

fn one_task(id: i64) -> Result<Task, Error> {
    db::query_one(&format!("{SELECT_TASKS} WHERE t.id = ?1"), &params![id])?
        .ok_or_else(|| Error::NotFound(format!("no task {id}")))
}

/// Tasks per page unless `?limit=` says otherwise, and the most one page may hold.
const PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// `GET /tasks?assignee=&limit=&after=`: a page of tasks in id order, after the task id
/// `after` (keyset paging: ask for the next page with `after=<last id>`; a page shorter
/// than `limit` is the last). Any number of tasks can be listed this way.
fn list_tasks(req: &Request) -> Result<Response, Error> {
    let number = |name: &str, default: i64| -> Result<i64, Error> {
        match req.query_param(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Error::BadRequest(format!("{name} must be a whole number"))),
        }
    };
    let limit = number("limit", PAGE)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = number("after", 0)?;
    let tasks: Vec<Task> = match req.query_param("assignee") {
        Some(a) => {
            let a: i64 = a
                .parse()
                .map_err(|_| Error::BadRequest("assignee must be a user id".into()))?;
            db::query_as(
                &format!(
                    "{SELECT_TASKS} WHERE t.assignee = ?1 AND t.id > ?2 ORDER BY t.id LIMIT ?3"
                ),
                &params![a, after, limit],
            )?
        }
        None => db::query_as(
            &format!("{SELECT_TASKS} WHERE t.id > ?1 ORDER BY t.id LIMIT ?2"),
            &params![after, limit],
        )?,
    };
    Response::json(200, &tasks)
}

/// `GET /tasks/export`: every task as newline-delimited JSON, read through a cursor a
/// batch at a time (however many tasks there are, only one batch of rows is held
/// besides the body being written).
fn export_tasks(_req: &Request) -> Result<Response, Error> {
    let mut body = Vec::new();
    for task in db::query_iter::<Task>(&format!("{SELECT_TASKS} ORDER BY t.id"), &[])? {
        serde_json::to_writer(&mut body, &task?).map_err(|e| Error::Internal(e.to_string()))?;
        body.push(b'\n');
    }
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), "application/x-ndjson".into())],
        body,
    })
}

fn create_task(req: &Request) -> Result<Response, Error> {
    let new: NewTask = req.json()?;
    let title = new.title.trim();
    if title.is_empty() || title.chars().count() > 500 {
        return Err(Error::BadRequest(
            "title must be 1 to 500 characters".into(),
        ));
    }
    if let Some(list) = new.list_id
        && db::query("SELECT 1 FROM tasks__lists WHERE id = ?1", &params![list])?
            .rows
            .is_empty()
    {
        return Err(Error::BadRequest(format!("no list {list}")));
    }
    let me = caller();
    let created = db::execute(
        "INSERT INTO tasks__tasks (list_id, title, assignee, created_by) VALUES (?1, ?2, ?3, ?4)",
        &params![new.list_id, title, new.assignee, me.user_id],
    )?;
    Response::json(201, &one_task(created.last_insert_id)?)
}

fn get_task(req: &Request) -> Result<Response, Error> {
    Response::json(200, &one_task(req.param_as("id")?)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assign {
    assignee: Option<i64>,
}

fn assign_task(req: &Request) -> Result<Response, Error> {
    let id: i64 = req.param_as("id")?;
    let body: Assign = req.json()?;
    let changed = db::execute(
        "UPDATE tasks__tasks SET assignee = ?2 WHERE id = ?1",
        &params![id, body.assignee],
    )?;
    if changed.rows_affected == 0 {
        return Err(Error::NotFound(format!("no task {id}")));
    }
    Response::json(200, &one_task(id)?)
}

fn complete_task(req: &Request) -> Result<Response, Error> {
    let id: i64 = req.param_as("id")?;
    let changed = db::execute(
        "UPDATE tasks__tasks SET done = 1 WHERE id = ?1 AND done = 0",
        &params![id],
    )?;
    let task = one_task(id)?;
    if changed.rows_affected == 1 {
        log::info(&format!("task {id} completed by user {}", caller().user_id));
        #[derive(Serialize)]
        struct Completed<'a> {
            task_id: i64,
            title: &'a str,
            completed_by: i64,
            assignee: Option<i64>,
        }
        events::emit(
            "task.completed",
            &Completed {
                task_id: task.id,
                title: &task.title,
                completed_by: caller().user_id,
                assignee: task.assignee,
            },
        )?;
    }
    Response::json(200, &task)
}

fn delete_task(req: &Request) -> Result<Response, Error> {
    let id: i64 = req.param_as("id")?;
    if db::execute("DELETE FROM tasks__tasks WHERE id = ?1", &params![id])?.rows_affected == 0 {
        return Err(Error::NotFound(format!("no task {id}")));
    }
    Ok(Response::empty(204))
}

fn list_lists(_req: &Request) -> Result<Response, Error> {
    let lists: Vec<List> = db::query_as(
        "SELECT id, name, owner, created_at FROM tasks__lists ORDER BY id",
        &[],
    )?;
    Response::json(200, &lists)
}

fn create_list(req: &Request) -> Result<Response, Error> {
    let new: NewList = req.json()?;
    if new.name.trim().is_empty() {
        return Err(Error::BadRequest("name must not be empty".into()));
    }
    let created = db::execute(
        "INSERT INTO tasks__lists (name, owner) VALUES (?1, ?2)",
        &params![new.name.trim(), caller().user_id],
    )?;
    let list: Option<List> = db::query_one(
        "SELECT id, name, owner, created_at FROM tasks__lists WHERE id = ?1",
        &params![created.last_insert_id],
    )?;
    Response::json(201, &list)
}

fn router() -> Router {
    Router::new()
        .get("/tasks", list_tasks)
        .post("/tasks", create_task)
        .get("/tasks/export", export_tasks)
        .get("/tasks/{id}", get_task)
        .put("/tasks/{id}/assignee", assign_task)
        .post("/tasks/{id}/complete", complete_task)
        .delete("/tasks/{id}", delete_task)
        .get("/lists", list_lists)
        .post("/lists", create_list)
}

export_plugin!(router);
