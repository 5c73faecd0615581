"""One function per Airflow task (no Airflow imports here).

Every function takes plain values (strings, numbers, paths as strings) and returns a small JSON-safe
dict, so a DAG passes paths and ids, never data, through XCom. Heavy libraries (torch, mlflow, GX) are
imported inside the functions: importing this package is cheap, and DAG parsing never pays for them.
"""
