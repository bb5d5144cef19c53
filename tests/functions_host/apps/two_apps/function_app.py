import azure.functions as func

app = func.FunctionApp()
other = func.FunctionApp()


@app.route(route="a")
def a(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("a")
