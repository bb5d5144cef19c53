import azure.functions as func

app = func.FunctionApp()


@app.function_name("lonely")
def lonely() -> None:
    pass
