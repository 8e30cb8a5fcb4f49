"""Studio: one web page (and its JSON API) to build a voice data set, train, listen, compare and speak.

Why FastAPI with plain HTML rather than Gradio: Gradio 6 needs ``huggingface_hub`` >= 1, which transformers 4.46
refuses, and every Gradio 5.x release pins ``starlette<1.0`` and ``pydantic<=2.12.3`` (5.50.0 also ``pandas<3`` and
``pillow<12``) against the lock's starlette 1.10, pydantic 2.14, pandas 3.1 and pillow 13, which Ray's dashboard
and MLflow's server run on. FastAPI, starlette and uvicorn are already in the lock, so the page adds no package.

The server holds no state a page needs: runs come from the project's MLflow store, jobs from a record under
``--output_root/studio_jobs/`` and the job's own log, so two browsers see the same thing and a reload, or a restart
of the server, loses nothing; a training job runs in its own process (or on Ray) and outlives both.
"""
