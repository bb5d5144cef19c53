"""The entry points, one module per thing served, each a Functions Blueprint registered in function_app.py.
They turn a trigger's input into one call of the collaborator they serve and nothing more."""
